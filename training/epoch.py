"""One training epoch and the validation count, summed over the ranks under DDP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.distributed import sum_over_ranks, uneven_inputs
from training.loaders import SkipLog
from training.losses import ComposedLoss
from training.mixup import mix
from training.posthoc import AdjustedErrors


@dataclass(frozen=True)
class EpochResult:
    loss: float
    error: float
    samples: int


@dataclass(frozen=True)
class ErrorCount:
    """Top-1 mistakes among the images seen, summed over the ranks; per class when counted."""

    wrong: int
    seen: int
    class_correct: tuple[int, ...] = ()
    class_seen: tuple[int, ...] = ()
    wrong_by_tau: tuple[int, ...] = ()  # under each post-hoc adjustment τ (training.posthoc), when counted

    @property
    def error(self) -> float:
        return self.wrong / self.seen

    @property
    def class_accuracy(self) -> list[float]:
        """Accuracy of each class (0 for a class with no image)."""
        return [correct / seen if seen else 0.0 for correct, seen in zip(self.class_correct, self.class_seen)]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: ComposedLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    skips: SkipLog,
    description: str,
    show_progress: bool = True,
    mixup: float = 0.0,
) -> EpochResult:
    """One pass over the loader; loss, error and sample count are those of all ranks together.

    With ``mixup`` > 0 each batch is mixed (``training.mixup``); the error counted is against the unmixed labels."""
    model.train()
    total_loss, wrong, seen = 0.0, 0, 0
    progress = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True, disable=not show_progress)
    with uneven_inputs(model):
        for batch in progress:
            skips.add(batch.skipped)
            if batch.images is None or len(batch.labels) < 2:
                continue
            images = batch.images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            mixed = mix(images, labels, mixup)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(mixed.images)
            loss = mixed.loss(loss_fn, logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: the loss is {loss.item()} (lower --lr?)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(labels)
            wrong += int((logits.argmax(dim=1) != labels).sum())
            seen += len(labels)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", error=f"{wrong / seen:.3f}")
    total_loss, wrong, seen = sum_over_ranks([total_loss, wrong, seen], device)
    if seen == 0:
        raise RuntimeError(f"{description}: no readable training image")
    return EpochResult(total_loss / seen, wrong / seen, int(seen))


def _batch_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None, skips: SkipLog
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``model``'s logits (on its device) and the labels (on the CPU) of each batch of ``loader``, in eval mode and
    without autograd; unreadable images go to ``skips``."""
    model.eval()
    for batch in loader:
        skips.add(batch.skipped)
        if batch.images is None:
            continue
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(batch.images.to(device, non_blocking=True))
        yield logits, batch.labels


@torch.inference_mode()
def top1_error(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None, skips: SkipLog, n_classes: int = 0,
    adjusted: AdjustedErrors | None = None,
) -> ErrorCount:
    """Top-1 mistakes of ``model`` over ``loader`` (per class for ``n_classes`` > 0, under each post-hoc τ for ``adjusted``),
    summed over the ranks' shards (unreadable images are left out)."""
    wrong, seen = 0, 0
    class_correct, class_seen = np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)
    for logits, labels in _batch_logits(model, loader, device, amp_dtype, skips):
        right = logits.argmax(dim=1).cpu() == labels
        if adjusted is not None:
            adjusted.add(logits, labels)
        wrong += int((~right).sum())
        seen += len(labels)
        if n_classes:
            class_correct += np.bincount(labels[right].numpy(), minlength=n_classes)
            class_seen += np.bincount(labels.numpy(), minlength=n_classes)
    by_tau = adjusted.wrong if adjusted is not None else []
    totals = [int(value) for value in sum_over_ranks([wrong, seen, *class_correct, *class_seen, *by_tau], device)]
    if totals[1] == 0:
        raise RuntimeError("no readable validation image")
    end = 2 + 2 * n_classes
    return ErrorCount(totals[0], totals[1], tuple(totals[2 : 2 + n_classes]), tuple(totals[2 + n_classes : end]), tuple(totals[end:]))


def collect_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None, skips: SkipLog, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K]`` float32 logits (on the CPU) and ``[N]`` labels of ``model`` over ``loader`` (the first ``limit`` images),
    unreadable images left out."""
    logits, labels, seen = [], [], 0
    for batch_logits, batch_labels in _batch_logits(model, loader, device, amp_dtype, skips):
        logits.append(batch_logits.float().cpu())
        labels.append(batch_labels)
        seen += len(batch_labels)
        if limit is not None and seen >= limit:
            break
    if not labels:
        raise RuntimeError("no readable validation image")
    return torch.cat(logits)[:limit], torch.cat(labels)[:limit]
