"""Losses composed of parts (``training.loss_registry`` names them; ``parts`` and ``composed`` build them).

``create_loss(name, class_counts, **params)`` builds the preset ``name``: ce, bce, sce and bsce (the
paper's four, BSCE = α·BCE + β·RCE), ldam-drw, la, vs, logitclip, alpha, cdb, absgd and bsce-la.
The trainer drives a loss through ``LossHooks`` (the epoch; per-class validation accuracy for CDB-W).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch

from training.loss_registry import LOSS_PARAMETERS, PAPER_LOG_ZERO, REFERENCE_LOG_ZERO, TRANSFORMS, loss_preset  # noqa: F401  (PAPER_LOG_ZERO: for callers)
from training.losses.composed import ComposedLoss, LossHooks, SymmetricCrossEntropy  # noqa: F401
from training.losses.parts import (  # noqa: F401
    TRANSFORM_MODULES,
    alpha_loss,
    class_balance_weights,
    effective_number_weights,
)

PARTS_KEY = "parts"  # LossSpec.params' record of the parts, derived from the name


def create_loss(name: str, class_counts: Sequence[int] | None = None, **params: Any) -> ComposedLoss:
    """Build the registered loss ``name`` with ``params`` over its defaults.

    Parameters of other losses are ignored (α and β apply to the losses with the reverse-CE term only);
    unknown names are refused. ``params`` may hold the manifest's ``parts`` record, which must match.
    """
    preset = loss_preset(name)
    recorded = params.pop(PARTS_KEY, None)
    if recorded is not None and recorded != preset.parts:
        raise ValueError(f"loss {name} is made of {preset.parts}, not {recorded}")
    unknown = set(params) - LOSS_PARAMETERS
    if unknown:
        raise ValueError(f"unknown loss parameters {sorted(unknown)}; losses take {sorted(LOSS_PARAMETERS)}")
    values = preset.spec(**{key: value for key, value in params.items() if key in preset.params}).params
    needs_counts = preset.transform not in (None, "logit_clip") or preset.class_weights is not None
    if needs_counts and class_counts is None:
        raise ValueError(f"{name} needs the training class counts")
    transform = None
    if preset.transform is not None:
        module = TRANSFORM_MODULES[preset.transform]
        transform = module(class_counts, **{key: values[key] for key in TRANSFORMS[preset.transform]})
    weights = None
    if preset.class_weights == "balanced":
        weights = class_balance_weights(class_counts)
    elif preset.class_weights == "effective_number":
        weights = effective_number_weights(class_counts, values["cb_beta"])
    elif preset.class_weights == "cdb":
        weights = torch.ones(len(class_counts))  # until the first validation (observe_class_accuracy)
    return ComposedLoss(
        transform=transform,
        base=partial(alpha_loss, alpha_loss=values["alpha_loss"]) if preset.base == "alpha" else None,
        class_weights=weights,
        drw_epoch=values.get("drw_epoch"),
        alpha=values.get("alpha", 1.0),
        beta=values.get("beta", 0.0),
        log_zero=values.get("log_zero", REFERENCE_LOG_ZERO),
        cdb_tau=values.get("cdb_tau"),
        absgd_lambda=values.get("absgd_lambda"),
        absgd_epoch=values.get("absgd_epoch"),
    )

