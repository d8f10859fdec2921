"""The losses by name: the parts each one combines and its parameters with their defaults (torch-free).

One registry drives ``--loss``'s choices and the loss options' defaults (``training.config``), the
manifest's ``LossSpec`` (``LossConfig.spec``), the module ``training.losses.create_loss`` builds, and
the quality benchmark's list of losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from app.contract.manifest import LossSpec

REFERENCE_LOG_ZERO = math.log(1e-4)  # the reference SCE code clamps the label at 1e-4
PAPER_LOG_ZERO = -4.0  # the value the SCE paper writes
DEFAULT_ALPHA = 0.4
DEFAULT_BETA = 0.7
SYMMETRIC = {"alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA, "log_zero": REFERENCE_LOG_ZERO}
DEFERRED_WEIGHTS = {"drw_epoch": None}  # class weights from this epoch on (LDAM-DRW); None: from the start


@dataclass(frozen=True)
class LossPreset:
    """A named loss: whether the CE term is class-balanced, and the parameters it takes (with defaults)."""

    name: str
    summary: str
    class_weights: bool
    params: dict[str, Any] = field(default_factory=dict)

    def spec(self, **given: Any) -> LossSpec:
        """The manifest's record: each parameter this preset takes, given or default; others are refused."""
        unknown = set(given) - set(self.params)
        if unknown:
            raise ValueError(f"loss {self.name} takes {sorted(self.params) or 'no parameters'}, not {sorted(unknown)}")
        return LossSpec(self.name, {**self.params, **given})


LOSS_PRESETS: dict[str, LossPreset] = {
    preset.name: preset
    for preset in (
        LossPreset("ce", "cross entropy", class_weights=False),
        LossPreset("bce", "balanced CE: w(k) = N/(K·n(k))", class_weights=True, params=DEFERRED_WEIGHTS),
        LossPreset("sce", "symmetric CE: α·CE + β·RCE", class_weights=False, params=SYMMETRIC),
        LossPreset(
            "bsce", "balanced symmetric CE: α·BCE + β·RCE", class_weights=True, params={**SYMMETRIC, **DEFERRED_WEIGHTS}
        ),
    )
}

LOSS_PARAMETERS = frozenset(name for preset in LOSS_PRESETS.values() for name in preset.params)


def loss_preset(name: str) -> LossPreset:
    """The preset called ``name``; ValueError naming the choices otherwise."""
    try:
        return LOSS_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {tuple(LOSS_PRESETS)}") from None
