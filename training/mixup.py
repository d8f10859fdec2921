"""Mixup (Zhang et al. 2018): a batch blended with a shuffle of itself, and the loss taken on both labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class MixedBatch:
    """Images λ·x_i + (1−λ)·x_j, j the partner of i in a shuffle of the batch (label y_j: ``partner_labels``); ``loss`` is
    λ·ℓ(y_i) + (1−λ)·ℓ(y_j), exact for losses that average per-sample terms, as every preset does."""

    images: torch.Tensor
    labels: torch.Tensor
    partner_labels: torch.Tensor
    lam: float

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        if self.lam == 1.0:
            return loss_fn(logits, self.labels)
        return self.lam * loss_fn(logits, self.labels) + (1.0 - self.lam) * loss_fn(logits, self.partner_labels)


def mix(images: torch.Tensor, labels: torch.Tensor, alpha: float) -> MixedBatch:
    """One mixup draw (λ ~ Beta(alpha, alpha), a random pairing) from the global torch generator; ``alpha`` 0: the batch as is."""
    if alpha <= 0:
        return MixedBatch(images, labels, labels, 1.0)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(labels), device=labels.device)
    return MixedBatch(lam * images + (1.0 - lam) * images[order], labels, labels[order], lam)
