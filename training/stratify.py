"""Seeded, stratified validation splits: how many images of each class, and which."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ValidationRule:
    """How the validation split was chosen; reported by ``productrec data`` and in the run's data.json."""

    kind: str  # "balanced hold-out" (the benchmark), "fraction", "per class" or "data set"
    description: str
    val_fraction: float | None = None
    val_per_class: int | None = None
    min_images_for_validation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each sample's rank among the samples of its class, ordered by ``keys`` (ties by position)."""
    order = np.lexsort((np.arange(labels.shape[0]), keys, labels))
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(labels.shape[0], dtype=np.int64)
    rank[order] = np.arange(labels.shape[0]) - first_of_class
    return rank


def proportional_counts(counts: np.ndarray, fraction: float, min_images: int) -> np.ndarray:
    """round(fraction * n_k) validation images per class, at least 1 and at most n_k - 1; 0 below ``min_images``."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    counts = np.asarray(counts, dtype=np.int64)
    wanted = np.floor(fraction * counts + 0.5).astype(np.int64)
    spared = np.clip(wanted, 1, np.maximum(counts - 1, 1))
    return np.where(counts >= max(min_images, 2), spared, 0)


def capped_counts(counts: np.ndarray, per_class: int) -> np.ndarray:
    """``per_class`` validation images per class, at most half of each, so every class keeps one for training."""
    return np.minimum(per_class, np.asarray(counts, dtype=np.int64) // 2)


def stratified_mask(labels: np.ndarray, per_class: np.ndarray, seed: int) -> np.ndarray:
    """True for the ``per_class[k]`` samples of each class k that a seeded shuffle puts first."""
    rng = np.random.default_rng(seed)
    rank = rank_within_class(labels, rng.random(labels.shape[0]))
    return rank < per_class[labels]
