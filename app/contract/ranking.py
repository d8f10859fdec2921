"""Combining crops and ensemble members into ranked labels (NumPy only).

Shared by ``productrec evaluate`` and the service, so both rank identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["vote", "mean"]
STRATEGIES: tuple[str, ...] = ("vote", "mean")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    logits = logits.astype(np.float32)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def crop_average_probabilities(logits: np.ndarray, n_crops: int, temperature: float = 1.0) -> np.ndarray:
    """``[B * n_crops, K]`` logits (crops of one image adjacent) -> ``[B, K]`` probabilities.

    The logits are averaged over the crops before the softmax, as the paper
    averages the features extracted at each scale, and divided by the member's
    calibrated ``temperature`` (which never changes the member's own ranking).
    """
    batch = logits.shape[0] // n_crops
    return softmax(logits.reshape(batch, n_crops, -1).mean(axis=1) / np.float32(temperature))


@dataclass(frozen=True)
class Ranking:
    """Top-k of one image: class indices, mean member probability and member votes."""

    indices: np.ndarray  # [k] int
    scores: np.ndarray  # [k] float32, mean probability over members
    votes: np.ndarray  # [k] int, members whose top-1 is this class


def rank(member_probs: np.ndarray, top_k: int, strategy: Strategy = "vote") -> list[Ranking]:
    """Rank classes for each image from ``[M, B, K]`` member probabilities.

    ``vote``: the label with most member top-1 votes wins, ties broken by the
    highest mean probability; the rest follow by votes, then mean probability.
    ``mean``: by mean probability alone. Costs O(B·K) plus a sort of a few
    candidates per image, so 50,000 classes stay cheap.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n_members, batch, n_classes = member_probs.shape
    top_k = min(top_k, n_classes)
    mean_probs = member_probs.mean(axis=0)
    votes = np.zeros((batch, n_classes), dtype=np.int64)
    member_top1 = member_probs.argmax(axis=2)  # [M, B]
    for member in range(n_members):
        np.add.at(votes, (np.arange(batch), member_top1[member]), 1)
    n_candidates = min(n_classes, top_k + n_members)
    rankings = []
    for image in range(batch):
        candidates = np.argpartition(mean_probs[image], n_classes - n_candidates)[n_classes - n_candidates :]
        if strategy == "vote":
            candidates = np.union1d(candidates, member_top1[:, image])
            order = np.lexsort((-mean_probs[image, candidates], -votes[image, candidates]))
        else:
            order = np.argsort(-mean_probs[image, candidates], kind="stable")
        chosen = candidates[order[:top_k]]
        rankings.append(Ranking(chosen, mean_probs[image, chosen], votes[image, chosen]))
    return rankings


def predict_top1(member_probs: np.ndarray, strategy: Strategy = "vote") -> np.ndarray:
    """The ensemble's top-1 class per image, ``[B]``."""
    return np.array([ranking.indices[0] for ranking in rank(member_probs, 1, strategy)], dtype=np.int64)
