"""Post-hoc corrections of the logits, fitted on the validation split and folded into the classifier's bias,
so evaluation, export and serving see one model.

- Logit adjustment (Menon et al. 2021): predict argmax z − τ·log π. The prior π is that of the training labels.
  Label noise flattens it (symmetric noise moves labels from the head to every class), so the τ = 1 of the
  paper under-corrects; τ is picked from a grid by the validation error instead, 0 included, so a run whose
  validation split looks like its training data keeps its logits.
- Class offsets: predict argmax z + b with one offset per class, b fitted by penalised likelihood on the
  validation split (the bias correction of Alexandari et al. 2020, "Maximum likelihood with bias-corrected
  calibration is hard-to-beat at label shift adaptation"). It corrects what one τ cannot: the training labels'
  prior is not the true one under noise, and re-weighting losses over- or under-shoot class by class. They are
  kept only when a cross-fit on validation (fit on one half, count the mistakes on the other) makes fewer
  mistakes than the logits without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

TAU_GRID: tuple[float, ...] = tuple(step * 0.25 for step in range(17))  # 0, 0.25, ..., 4
# The Gaussian prior on each class offset, in nats: offsets of a few nats are plausible (ρ = 100 is a log-prior gap of
# 4.6); it keeps the fit finite for classes with few or no validation images and fixes the free constant (mean 0).
OFFSET_PRIOR_STD = 2.0
OFFSET_FOLDS = 2
# The validation logits held for the fit (float32, 512 MiB; the fit peaks near 5x that): beyond this many, a seeded
# subset of the images is used (so with 10 images a class, offsets are fitted for up to 13,421 classes).
MAX_OFFSET_LOGITS = 2**27
# Below this many validation images a class on average, nothing is fitted: each fold's offsets would learn which
# classes that fold happens to hold (at 50,000 classes and 4,000 images the cross-fit made 0.96 errors for 0.59).
OFFSET_MIN_IMAGES_PER_CLASS = 10


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


def fit_class_offsets(logits: torch.Tensor, labels: torch.Tensor, prior_std: float = OFFSET_PRIOR_STD) -> torch.Tensor:
    """``[K]`` offsets b minimising Σ_i −log softmax(z_i + b)[y_i] + ‖b‖² / (2·prior_std²) (L-BFGS; the objective is convex)."""
    logits = logits.detach().float()
    labels = labels.to(logits.device, torch.long)
    offsets = torch.zeros(logits.shape[1], dtype=torch.float32, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([offsets], lr=1.0, max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")
    count = max(1, len(labels))

    def objective() -> torch.Tensor:  # divided by the image count: the same minimum, a scale L-BFGS's tolerances suit
        optimizer.zero_grad()
        shifted = logits + offsets
        nll = (torch.logsumexp(shifted, dim=1) - shifted.gather(1, labels[:, None]).squeeze(1)).sum()
        loss = (nll + offsets.square().sum() / (2 * prior_std**2)) / count
        loss.backward()
        return loss

    optimizer.step(objective)
    return offsets.detach()


@dataclass(frozen=True)
class OffsetFit:
    """Class offsets fitted on validation, and whether they are kept."""

    offsets: list[float]  # fitted on all the validation images used
    images: int  # validation images used
    error_before: float  # validation error of the logits without offsets
    error_cross_fitted: float  # each fold's mistakes under the offsets fitted on the other folds
    kept: bool  # error_cross_fitted < error_before: otherwise the logits stay as they were
    skipped: str = ""  # why nothing was fitted (offsets empty), if so

    @property
    def val_error(self) -> float:
        """The validation error to report: cross-fitted when kept (the in-sample error of the full fit is optimistic)."""
        return self.error_cross_fitted if self.kept else self.error_before


def class_offsets(logits: torch.Tensor, labels: torch.Tensor, folds: int = OFFSET_FOLDS, seed: int = 0) -> OffsetFit:
    """Fit offsets on ``[N, K]`` validation logits, cross-fitted over ``folds`` seeded folds to decide whether to keep them."""
    logits, labels = logits.detach().float(), labels.to(logits.device, torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(logits.device)
    wrong = 0
    for fold in range(folds):
        held = order[fold::folds]
        fitted = torch.cat([order[other::folds] for other in range(folds) if other != fold])
        offsets = fit_class_offsets(logits[fitted], labels[fitted])
        wrong += int(((logits[held] + offsets).argmax(dim=1) != labels[held]).sum())
    before = float((logits.argmax(dim=1) != labels).float().mean())
    cross_fitted = wrong / len(labels)
    offsets = fit_class_offsets(logits, labels)
    return OffsetFit([float(value) for value in offsets.cpu()], len(labels), before, cross_fitted, cross_fitted < before)


def offset_images(n_images: int, n_classes: int) -> tuple[int, str]:
    """How many validation images an offset fit uses (at most ``MAX_OFFSET_LOGITS`` logits), and why none ("" if some)."""
    usable = min(n_images, MAX_OFFSET_LOGITS // max(1, n_classes))
    if usable < OFFSET_MIN_IMAGES_PER_CLASS * n_classes:
        return 0, f"{usable} validation images usable for {n_classes} classes: fewer than {OFFSET_MIN_IMAGES_PER_CLASS} a class"
    return usable, ""


def offset_state_dict(state: dict[str, torch.Tensor], bias_key: str, offsets: Sequence[float]) -> dict[str, torch.Tensor]:
    """``state`` with the classifier bias b replaced by b + offsets (a copy)."""
    bias = state[bias_key]
    return {**state, bias_key: bias + torch.as_tensor(offsets, dtype=bias.dtype, device=bias.device)}
