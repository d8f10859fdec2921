"""Seeded, stratified selection of samples within their classes."""

from __future__ import annotations

import numpy as np


def rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each sample's rank among the samples of its class, ordered by ``keys`` (ties by position)."""
    order = np.lexsort((np.arange(labels.shape[0]), keys, labels))
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(labels.shape[0], dtype=np.int64)
    rank[order] = np.arange(labels.shape[0]) - first_of_class
    return rank
