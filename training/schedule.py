"""The learning-rate schedule of ``productrec train``: divide by 10 on a validation plateau."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

log = logging.getLogger("productrec.train")


@dataclass
class PlateauSchedule:
    """lr × ``factor`` after ``patience`` epochs without a lower validation error; finished below ``min_lr``."""

    lr: float
    patience: int
    min_lr: float
    factor: float = 0.1
    best: float = math.inf
    epochs_without_improvement: int = 0

    @property
    def finished(self) -> bool:
        # The relative tolerance keeps 0.01 × 0.1 × 0.1 (= 1.0000000000000002e-4) from missing min_lr = 1e-4.
        return self.lr < self.min_lr * (1 - 1e-9)

    def step(self, val_error: float) -> bool:
        """Record one epoch's validation error; True when it is a new best."""
        if val_error < self.best:
            self.best = val_error
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience:
            self.lr *= self.factor
            self.epochs_without_improvement = 0
            log.info("validation error has not improved for %d epochs: lr -> %.2e", self.patience, self.lr)
        return False

    def state_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
