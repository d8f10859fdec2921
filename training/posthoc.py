"""Post-hoc logit adjustment (Menon et al. 2021): predict argmax z − τ·log π, τ chosen on the validation split.

The prior π is that of the training labels. Label noise flattens it (symmetric noise moves labels from the
head to every class), so the τ = 1 of the paper under-corrects; τ is picked from a grid by the validation
error instead, 0 included, so a run whose validation split looks like its training data keeps its logits.
The chosen adjustment is folded into the classifier's bias, so evaluation, export and serving see one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

TAU_GRID: tuple[float, ...] = tuple(step * 0.25 for step in range(17))  # 0, 0.25, ..., 4


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """log π of the training labels (a class without a label counts as one)."""
    counts = torch.as_tensor(np.maximum(np.asarray(class_counts, np.float64), 1.0))
    return torch.log(counts / counts.sum()).float()


def classifier_bias_key(model: nn.Module) -> str:
    """The state-dict key of the classifier's bias (timm's ``get_classifier()``)."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError(f"post-hoc logit adjustment needs a linear classifier with a bias, not {head!r}")
    for name, module in model.named_modules():
        if module is head:
            return f"{name}.bias" if name else "bias"
    raise ValueError("the classifier is not a submodule of the model")


@dataclass
class AdjustedErrors:
    """Validation mistakes under each τ of the grid, counted batch by batch."""

    log_prior: torch.Tensor
    taus: tuple[float, ...] = TAU_GRID
    wrong: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wrong = [0] * len(self.taus)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        prior = self.log_prior.to(logits.device, torch.float32)
        logits, labels = logits.float(), labels.to(logits.device)
        for index, tau in enumerate(self.taus):  # one [B, K] at a time: 50,000 classes stay small
            self.wrong[index] += int(((logits - tau * prior).argmax(dim=1) != labels).sum())

    def best(self, wrong: Sequence[int]) -> tuple[float, int]:
        """(τ, mistakes) of the fewest mistakes; the smallest such τ."""
        index = int(np.argmin(wrong))
        return self.taus[index], int(wrong[index])


def adjusted_state_dict(state: dict[str, torch.Tensor], bias_key: str, tau: float, prior: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` with the classifier bias b replaced by b − τ·log π (a copy; the training model is untouched)."""
    if tau == 0:
        return state
    bias = state[bias_key]
    return {**state, bias_key: bias - tau * prior.to(bias.device, bias.dtype)}
