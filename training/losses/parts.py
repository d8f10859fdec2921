"""The parts a loss is built from (see ``training.loss_registry``): logit transforms, base losses and weights.

Transforms map logits [B, K] (float32) and targets [B] to new logits; base losses map log-probabilities
to a per-sample loss [B]; class weights are a [K] vector; sample weights a detached [B] vector.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def as_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("class_counts must be a 1-D sequence of non-negative counts")
    return counts


def log_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log π(k) = log n(k)/N; an empty class counts as one image, so its log prior stays finite."""
    counts = as_counts(class_counts).clamp(min=1)
    return (counts / counts.sum()).log().float()


# --------------------------------------------------------------------------- logit transforms


class LDAMMargin(nn.Module):
    """s·(z - Δ_y·onehot(y)) with Δ_j = C/n_j^(1/4), C such that the largest margin is ``max_margin``."""

    margins: torch.Tensor

    def __init__(self, class_counts: Sequence[int], max_margin: float = 0.5, scale: float = 1.0) -> None:
        super().__init__()
        if max_margin < 0 or scale <= 0:
            raise ValueError("LDAM needs max_margin >= 0 and scale > 0")
        inverse_root = as_counts(class_counts).clamp(min=1) ** -0.25
        self.register_buffer("margins", (inverse_root * (max_margin / inverse_root.max())).float())
        self.scale = float(scale)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        margin = self.margins[target].unsqueeze(1) * F.one_hot(target, logits.shape[1]).to(logits.dtype)
        return self.scale * (logits - margin)


class LogitAdjustment(nn.Module):
    """z + τ·log π (the logit-adjusted loss; UniMix's "Bayias")."""

    offset: torch.Tensor

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("offset", float(tau) * log_prior(class_counts))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits + self.offset


class VectorScaling(nn.Module):
    """z·(n/n_max)^γ + τ·log π: the VS loss's multiplicative and additive logit adjustments."""

    factor: torch.Tensor
    offset: torch.Tensor

    def __init__(self, class_counts: Sequence[int], vs_gamma: float = 0.3, tau: float = 1.0) -> None:
        super().__init__()
        counts = as_counts(class_counts).clamp(min=1)
        self.register_buffer("factor", ((counts / counts.max()) ** vs_gamma).float())
        self.register_buffer("offset", float(tau) * log_prior(class_counts))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits * self.factor + self.offset


class LogitClip(nn.Module):
    """Scale each logit vector down to norm 1/τ when its L_p norm exceeds 1/τ (LogitClip).

    The paper's rule; its code tests the norm against τ instead of 1/τ, a discontinuous variant.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, clip_tau: float = 1.5, clip_p: float = 2.0) -> None:
        super().__init__()
        if clip_tau <= 0 or clip_p <= 0:
            raise ValueError("LogitClip needs clip_tau > 0 and clip_p > 0")
        self.bound, self.p = 1.0 / clip_tau, float(clip_p)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(logits, ord=self.p, dim=1, keepdim=True).clamp(min=1e-7)
        return torch.where(norms > self.bound, logits * (self.bound / norms), logits)


TRANSFORM_MODULES: dict[str, type[nn.Module]] = {
    "ldam": LDAMMargin,
    "logit_adjustment": LogitAdjustment,
    "vector_scaling": VectorScaling,
    "logit_clip": LogitClip,
}


# --------------------------------------------------------------------------- base losses


def cross_entropy(log_p_target: torch.Tensor) -> torch.Tensor:
    return -log_p_target


def alpha_loss(log_p_target: torch.Tensor, alpha_loss: float) -> torch.Tensor:
    """α/(α-1)·(1 - p^((α-1)/α)); α = 1 is the log-loss (CE), α → ∞ tends to 1 - p."""
    if alpha_loss <= 0:
        raise ValueError(f"the α-loss needs α > 0, got {alpha_loss}")
    if alpha_loss == 1:
        return -log_p_target
    exponent = (alpha_loss - 1) / alpha_loss
    return alpha_loss / (alpha_loss - 1) * (1 - torch.exp(exponent * log_p_target))


# --------------------------------------------------------------------------- class and sample weights


def class_balance_weights(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """w(k) = N / (K·n(k)); a class with no training sample gets weight 0."""
    counts = as_counts(class_counts)
    total, n_classes = counts.sum(), counts.numel()
    weights = torch.where(counts > 0, total / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def effective_number_weights(class_counts: Sequence[int] | torch.Tensor, cb_beta: float = 0.9999) -> torch.Tensor:
    """w(k) ∝ (1-β)/(1-β^n(k)), normalised to sum to K (Cui et al. 2019; LDAM-DRW's DRW weights); empty classes get 0."""
    if not 0 <= cb_beta < 1:
        raise ValueError(f"cb_beta must be in [0, 1), got {cb_beta}")
    counts = as_counts(class_counts)
    raw = torch.where(counts > 0, (1 - cb_beta) / (1 - cb_beta ** counts.clamp(min=1)), torch.zeros_like(counts))
    return (raw * counts.numel() / raw.sum()).float()


def cdb_weights(class_accuracy: Sequence[float] | torch.Tensor, cdb_tau: float | str = "dynamic") -> torch.Tensor:
    """CDB-W: w(k) = (1 - accuracy(k))^τ normalised to sum to K; τ "dynamic" = 2·σ(max acc/(min acc + 0.01) - 1)."""
    accuracy = torch.as_tensor(class_accuracy, dtype=torch.float64)
    if cdb_tau == "dynamic":
        tau = 2 / (1 + math.exp(-(float(accuracy.max()) / (float(accuracy.min()) + 0.01) - 1)))
    else:
        tau = float(cdb_tau)
    difficulty = (1 - accuracy).clamp(min=0) ** tau
    if difficulty.sum() <= 0:  # every class perfect: nothing to re-weight
        return torch.ones_like(accuracy, dtype=torch.float32)
    return (difficulty * accuracy.numel() / difficulty.sum()).float()


def absgd_weights(losses: torch.Tensor, absgd_lambda: float) -> torch.Tensor:
    """B·softmax(ℓ/λ) over the batch, detached: mean 1; λ > 0 favours hard samples, λ < 0 easy ones (label noise)."""
    if absgd_lambda == 0:
        raise ValueError("absgd_lambda must not be 0")
    return losses.shape[0] * torch.softmax(losses.detach() / absgd_lambda, dim=0)
