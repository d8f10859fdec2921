"""Losses: ce, bce, sce and the balanced symmetric cross entropy (bsce).

BSCE = α·BCE + β·RCE, where
- BCE_i = -w(y_i)·log p(y_i|x_i), with w(k) = N / (K·n(k));
- RCE_i = -Σ_k p(k|x_i)·log q(k|x_i) for the one-hot label q, whose log 0 is the
  constant A (``log_zero``). Because log q(y) = 0 and log q(k≠y) = A,
  RCE_i = -A·(1 - p(y_i|x_i)): exact, and O(B) memory beyond the log-softmax.

Each term is averaged over the batch as Σ_i ... / B (not PyTorch's Σ w·ℓ / Σ w).
Probabilities are computed in float32 from a log-softmax, even under autocast.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.loss_registry import LOSS_PARAMETERS, PAPER_LOG_ZERO, REFERENCE_LOG_ZERO, loss_preset  # noqa: F401  (PAPER_LOG_ZERO: for callers)


def class_balance_weights(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """w(k) = N / (K·n(k)); a class with no training sample gets weight 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("class_counts must be a 1-D sequence of non-negative counts")
    total, n_classes = counts.sum(), counts.numel()
    weights = torch.where(counts > 0, total / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


class SymmetricCrossEntropy(nn.Module):
    """α·(weighted) CE + β·RCE, averaged over the batch.

    With ``class_weights=None`` the CE term is unweighted (ce, sce); with
    weights it is the balanced CE (bce, bsce). ``drw_epoch`` defers the weights
    until that epoch (LDAM-DRW's deferred re-weighting); call ``set_epoch``.
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        class_weights: torch.Tensor | None = None,
        log_zero: float = REFERENCE_LOG_ZERO,
        drw_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if log_zero >= 0:
            raise ValueError(f"log_zero (A, the log of the one-hot label's zeros) must be < 0, got {log_zero}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.log_zero = float(log_zero)
        self.drw_epoch = drw_epoch
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        self.weights_active = drw_epoch is None or drw_epoch <= 0

    def set_epoch(self, epoch: int) -> None:
        """Turn the class weights on from ``drw_epoch`` (0-based) onwards."""
        self.weights_active = self.drw_epoch is None or epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        log_p_target = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        batch = logits.shape[0]
        ce = -log_p_target
        if self.class_weights is not None and self.weights_active:
            ce = self.class_weights[target] * ce
        loss = self.alpha * ce.sum() / batch
        if self.beta:
            rce = -self.log_zero * (1.0 - log_p_target.exp())
            loss = loss + self.beta * rce.sum() / batch
        return loss

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return f"alpha={self.alpha}, beta={self.beta}, log_zero={self.log_zero:.4f}, weighted={weighted}, drw_epoch={self.drw_epoch}"


def create_loss(name: str, class_counts: Sequence[int] | None = None, **params: Any) -> SymmetricCrossEntropy:
    """Build the registered loss ``name`` (``training.loss_registry``) with ``params`` over its defaults.

    Parameters of other losses are ignored (α and β apply to sce and bsce only); unknown names are refused.
    """
    preset = loss_preset(name)
    unknown = set(params) - LOSS_PARAMETERS
    if unknown:
        raise ValueError(f"unknown loss parameters {sorted(unknown)}; losses take {sorted(LOSS_PARAMETERS)}")
    values = preset.spec(**{key: value for key, value in params.items() if key in preset.params}).params
    weights = None
    if preset.class_weights:
        if class_counts is None:
            raise ValueError(f"{name} needs the training class counts")
        weights = class_balance_weights(class_counts)
    return SymmetricCrossEntropy(
        values.get("alpha", 1.0),
        values.get("beta", 0.0),
        weights,
        values.get("log_zero", REFERENCE_LOG_ZERO),
        values.get("drw_epoch"),
    )
