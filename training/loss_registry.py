"""The losses by name: the parts each one combines and its parameters with their defaults (torch-free).

A loss is ``term(transform(logits))`` per sample, weighted and averaged over the batch:

- a logit transform (``TRANSFORMS``): LDAM margins, logit adjustment, vector scaling or LogitClip;
- a base loss (``BASES``): cross entropy or the α-loss;
- class weights w(y) (``CLASS_WEIGHTS``), optionally deferred until ``drw_epoch`` (DRW);
- per-sample weights (``SAMPLE_WEIGHTS``): ABSGD's attention;
- with ``symmetric``, the reverse-CE term: α·w(y)·base + β·RCE (SCE/BSCE).

One registry drives ``--loss``'s choices, ``--loss-params``' help and checks (``training.config``), the
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
# A deferral (drw_epoch, absgd_epoch): None = from the start, an int = that (0-based) epoch, a float in (0, 1) = that share of --epochs.
PAPERS_SECOND_STAGE = 0.8  # LDAM-DRW and ABSGD start their second stage at epoch 160 of 200

# Each part's parameters with its paper's defaults. Names are unique across the parts a preset combines.
TRANSFORMS: dict[str, dict[str, Any]] = {
    "ldam": {"max_margin": 0.5, "scale": 1.0},  # Cao et al. 2019: Δ_j = C/n_j^¼, max Δ = 0.5; s = 1, as its s = 30 needs its cosine classifier
    "logit_adjustment": {"tau": 1.0},  # Menon et al. 2021: z + τ·log π
    "vector_scaling": {"vs_gamma": 0.3, "tau": 1.0},  # Kini et al. 2021: z·(n/n_max)^γ + τ·log π
    "logit_clip": {"clip_tau": 1.5, "clip_p": 2.0},  # Wei et al. 2023: ‖z‖_p ≤ 1/τ
}
BASES: dict[str, dict[str, Any]] = {
    "ce": {},
    "alpha": {"alpha_loss": 3.0},  # Sypherd et al.: α/(α-1)·(1 - p^(1-1/α)); α > 1 for noisy labels
}
CLASS_WEIGHTS: dict[str, dict[str, Any]] = {
    "balanced": {**DEFERRED_WEIGHTS},  # N/(K·n(k))
    "effective_number": {"cb_beta": 0.9999, **DEFERRED_WEIGHTS},  # Cui et al. 2019, LDAM-DRW's weights
    "cdb": {"cdb_tau": "dynamic", **DEFERRED_WEIGHTS},  # Sinha et al. 2020: (1 - val accuracy(k))^τ
}
SAMPLE_WEIGHTS: dict[str, dict[str, Any]] = {
    "absgd": {"absgd_lambda": -1.0, "absgd_epoch": PAPERS_SECOND_STAGE},  # Qi et al.: exp(ℓ/λ), λ < 0 for label noise
}


@dataclass(frozen=True)
class LossPreset:
    """A named loss: the parts it combines, the paper it follows and the defaults that differ from its parts'."""

    name: str
    summary: str
    transform: str | None = None
    base: str = "ce"
    class_weights: str | None = None
    sample_weights: str | None = None
    symmetric: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part, table in ((self.transform, TRANSFORMS), (self.base, BASES), (self.class_weights, CLASS_WEIGHTS), (self.sample_weights, SAMPLE_WEIGHTS)):
            if part is not None and part not in table:
                raise ValueError(f"loss {self.name}: unknown part {part!r}; choose one of {sorted(table)}")
        unknown = set(self.defaults) - set(self._part_params())
        if unknown:
            raise ValueError(f"loss {self.name}: defaults {sorted(unknown)} are not parameters of its parts")

    @property
    def parts(self) -> dict[str, Any]:
        """Which part fills each slot (the manifest records this beside the parameters)."""
        return {
            "transform": self.transform,
            "base": self.base,
            "class_weights": self.class_weights,
            "sample_weights": self.sample_weights,
            "reverse_ce": self.symmetric,
        }

    def _part_params(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(SYMMETRIC) if self.symmetric else {}
        for part, table in ((self.transform, TRANSFORMS), (self.base, BASES), (self.class_weights, CLASS_WEIGHTS), (self.sample_weights, SAMPLE_WEIGHTS)):
            if part is not None:
                params.update(table[part])
        return params

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter this preset takes, with its default."""
        return {**self._part_params(), **self.defaults}

    def spec(self, **given: Any) -> LossSpec:
        """The manifest's record: each parameter, given or default, and the parts; other parameters are refused."""
        unknown = set(given) - set(self.params)
        if unknown:
            raise ValueError(f"loss {self.name} takes {sorted(self.params) or 'no parameters'}, not {sorted(unknown)}")
        return LossSpec(self.name, {**self.params, **given, "parts": self.parts})

    def defaults_text(self) -> str:
        return " ".join(f"{key}={value!r}" for key, value in self.params.items()) or "no parameters"


LOSS_PRESETS: dict[str, LossPreset] = {
    preset.name: preset
    for preset in (
        LossPreset("ce", "cross entropy"),
        LossPreset("bce", "balanced CE: w(k) = N/(K·n(k))", class_weights="balanced"),
        LossPreset("sce", "symmetric CE: α·CE + β·RCE (Wang et al. 2019)", symmetric=True),
        LossPreset("bsce", "balanced symmetric CE: α·BCE + β·RCE", class_weights="balanced", symmetric=True),
        LossPreset(
            "ldam-drw", "LDAM margins; effective-number class weights in the last fifth of the epochs (DRW, Cao et al. 2019)",
            transform="ldam", class_weights="effective_number", defaults={"drw_epoch": PAPERS_SECOND_STAGE},
        ),
        LossPreset("la", "logit-adjusted CE: z + τ·log π (Menon et al. 2021)", transform="logit_adjustment"),
        LossPreset("vs", "vector-scaling loss: z·(n/n_max)^γ + τ·log π (Kini et al. 2021)", transform="vector_scaling"),
        LossPreset("logitclip", "CE on logits clipped to ‖z‖ ≤ 1/τ (LogitClip, Wei et al. 2023)", transform="logit_clip"),
        LossPreset("alpha", "α-loss, α > 1 (Sypherd et al. 2022)", base="alpha"),
        LossPreset("cdb", "CE with class-difficulty weights from per-class validation accuracy (CDB-W, Sinha et al. 2020)", class_weights="cdb"),
        LossPreset("absgd", "CE with ABSGD's per-sample weights exp(ℓ/λ) in its second stage (Qi et al.)", sample_weights="absgd"),
        LossPreset("bsce-la", "BSCE on logit-adjusted logits", transform="logit_adjustment", class_weights="balanced", symmetric=True),
    )
}

LOSS_PARAMETERS = frozenset(name for preset in LOSS_PRESETS.values() for name in preset.params)


def loss_preset(name: str) -> LossPreset:
    """The preset called ``name``; ValueError naming the choices otherwise."""
    try:
        return LOSS_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {tuple(LOSS_PRESETS)}") from None


def resolve_start(value: int | float | None, epochs: int | None) -> int:
    """The 0-based epoch a deferral (``drw_epoch``, ``absgd_epoch``) starts: None → 0, a share in (0, 1) of ``epochs``, else the epoch."""
    if value is None:
        return 0
    if isinstance(value, float) and 0 < value < 1:
        if epochs is None:
            raise ValueError(f"a deferral of {value} (a share of the epochs) needs the number of epochs")
        return round(value * epochs)
    if value < 0 or value != int(value):
        raise ValueError(f"a deferral must be None, an epoch >= 0 or a share in (0, 1), got {value!r}")
    return int(value)
