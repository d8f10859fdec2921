"""Calibration and average-k label sets (NumPy only): fitted at export on validation, applied by the service.

- Temperature scaling: one scalar T per member, fitted by minimising the NLL of its
  (TTA-averaged) validation logits; the service divides the logits by T before the softmax.
- ECE: the expected calibration error of the top-1 confidence, in equal-width bins.
- Average-k label sets: one probability threshold per k such that, on validation, the
  labels at or above it number k per image on average (the set of an image may be larger
  or smaller; it always holds at least the top-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.contract.ranking import softmax

ECE_BINS = 15
MAX_AVERAGE_K = 5
# The search interval of log T: T from 0.05 to 20 covers any useful member.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


@dataclass(frozen=True)
class Calibration:
    """A member's calibration record in its manifest: fitted on its validation split at export."""

    temperature: float
    ece_before: float
    ece_after: float
    validation_images: int
    average_k_thresholds: list[float] = field(default_factory=list)  # index k-1: the threshold for average size k
    average_k_coverage: list[float] = field(default_factory=list)  # index k-1: validation labels inside the set

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"the temperature must be > 0, got {self.temperature}")
        if len(self.average_k_coverage) not in (0, len(self.average_k_thresholds)):
            raise ValueError("average_k_coverage needs one value per threshold")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(**data)

    def threshold(self, k: int) -> float | None:
        """The probability threshold for average set size ``k``, or None when none was fitted."""
        return self.average_k_thresholds[k - 1] if 1 <= k <= len(self.average_k_thresholds) else None


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of ``labels`` under softmax(``logits`` / T), in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """T minimising the validation NLL: a golden-section search over log T (the NLL is unimodal in it)."""
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one image")
    low, high = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(iterations):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)| over equal-width bins of the top-1 confidence."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def average_k_threshold(probs: np.ndarray, k: int) -> float:
    """The threshold at which the ``[N, K]`` probabilities keep k labels per image on average (N·k in all)."""
    n_images, n_classes = probs.shape
    if not 1 <= k <= n_classes:
        raise ValueError(f"k must be between 1 and {n_classes}, got {k}")
    flat = probs.ravel()
    position = n_images * k - 1
    return float(np.partition(flat, flat.size - 1 - position)[flat.size - 1 - position])


def label_set_sizes(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``[B]`` sizes of the label sets: the labels at or above ``threshold``, at least the top-1."""
    return np.maximum((probs >= threshold).sum(axis=1), 1)


def set_coverage(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """The fraction of images whose label is in its set (the top-1 always counts)."""
    inside = probs[np.arange(len(labels)), labels] >= threshold
    return float(np.mean(inside | (probs.argmax(axis=1) == labels)))


def calibrate(logits: np.ndarray, labels: np.ndarray, max_k: int = MAX_AVERAGE_K) -> Calibration:
    """Fit T, measure ECE before and after, and fit the average-k thresholds (k = 1..max_k) on calibrated probabilities."""
    temperature = fit_temperature(logits, labels)
    before = softmax(logits)
    after = softmax(np.asarray(logits, dtype=np.float32) / temperature)
    ks = range(1, min(max_k, logits.shape[1]) + 1)
    thresholds = [average_k_threshold(after, k) for k in ks]
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        validation_images=int(len(labels)),
        average_k_thresholds=thresholds,
        average_k_coverage=[set_coverage(after, labels, threshold) for threshold in thresholds],
    )
