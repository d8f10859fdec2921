"""What is decided on the validation split: the TTA sizes to ship, the temperature and the average-k thresholds
(export), and how an ensemble combines its members (``productrec evaluate --choose-strategy``).

Each member's logits are computed once per candidate resize size; every non-empty set of
sizes is scored by the top-1 error of its averaged logits. The best set is shipped, and
never one worse than the single crop: the single crop is a candidate and wins ties.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from app.contract.calibration import Calibration, calibrate
from app.contract.preprocess import PreprocessConfig, largest_size, tta_crops
from app.contract.ranking import STRATEGIES, predict_top1
from training.image_sets import ImageSet, readable_batches

Logits = Callable[[np.ndarray], np.ndarray]  # [N, C, H, W] crops -> [N, K] logits


@dataclass(frozen=True)
class TtaScore:
    """The validation top-1 error of one set of resize sizes (logits averaged over the set)."""

    sizes: tuple[int, ...]
    error: float


@dataclass(frozen=True)
class ValidationChoice:
    """What the validation split chose for one member."""

    tta_sizes: tuple[int, ...]
    scores: list[TtaScore]
    calibration: Calibration


def validation_logits(
    logits: Logits, images: ImageSet, config: PreprocessConfig, sizes: Sequence[int], batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``[S, N, K]`` logits of every readable image at each resize size (centre crops), and its ``[N]`` labels."""
    per_batch, labels = [], []
    # JPEG files decode as the service decodes a TTA request: at the DCT scale the largest candidate size needs
    for decoded, kept in readable_batches(images, range(len(images)), batch_size, "validation", max(sizes)):
        batch = np.concatenate([tta_crops(image, config, sizes) for image in decoded])  # image-major: the sizes of one image adjacent
        per_batch.append(logits(batch).reshape(len(decoded), len(sizes), -1))
        labels += images.labels[kept].tolist()
    if not per_batch:
        raise ValueError("no readable validation image")
    return np.concatenate(per_batch).transpose(1, 0, 2), np.asarray(labels, dtype=np.int64)


def candidate_sets(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty set of the sizes, smallest sets first."""
    return [combo for count in range(1, len(sizes) + 1) for combo in itertools.combinations(sizes, count)]


def score_tta_sets(logits_by_size: np.ndarray, labels: np.ndarray, sizes: Sequence[int]) -> list[TtaScore]:
    """The validation error of every candidate set, from ``[S, N, K]`` logits at ``sizes``."""
    position = {size: index for index, size in enumerate(sizes)}
    scores = []
    for combo in candidate_sets(sizes):
        averaged = logits_by_size[[position[size] for size in combo]].mean(axis=0)
        scores.append(TtaScore(combo, float(np.mean(averaged.argmax(axis=1) != labels))))
    return scores


def choose_tta(scores: Sequence[TtaScore], single: int) -> tuple[int, ...]:
    """The best set, ties to fewer sizes and then to the single crop; never one worse than the single crop.

    The chosen set starts with its own best single size, the one a request without TTA uses.
    """
    by_sizes = {score.sizes: score.error for score in scores}
    single_error = by_sizes[(single,)]
    best = min(scores, key=lambda score: (score.error, len(score.sizes), score.sizes != (single,)))
    if best.error > single_error:  # unreachable while the single crop is a candidate; kept as the guarantee
        return (single,)
    return tuple(sorted(best.sizes, key=lambda size: (by_sizes[(size,)], size != single)))


def choose_on_validation(
    logits: Logits, images: ImageSet, config: PreprocessConfig, batch_size: int = 256, keep: bool = False
) -> ValidationChoice:
    """Score the TTA sets of ``config.tta_sizes`` on ``images``; calibrate the chosen set's averaged logits.

    ``keep``: the configured sizes are shipped as they are (scored and calibrated all the same).
    """
    sizes = config.sizes(tta=True)
    logits_by_size, labels = validation_logits(logits, images, config, sizes, batch_size)
    scores = score_tta_sets(logits_by_size, labels, sizes)
    chosen = tuple(sizes) if keep else choose_tta(scores, sizes[0])
    averaged = logits_by_size[[sizes.index(size) for size in chosen]].mean(axis=0)
    return ValidationChoice(chosen, scores, calibrate(averaged, labels))


def format_scores(scores: Sequence[TtaScore], chosen: tuple[int, ...] | None = None) -> str:
    """One line per candidate set: its sizes and validation error, the chosen one marked."""
    return "\n".join(
        f"  {'/'.join(map(str, score.sizes)):<12} {score.error:.4f}{'  <- shipped' if chosen and set(score.sizes) == set(chosen) else ''}"
        for score in scores
    )


def score_strategies(ensemble, images: ImageSet, batch_size: int = 256) -> tuple[dict[str, float], int]:
    """The validation top-1 error of ``ensemble`` (an ``app.engine.ensemble.Ensemble``, as served: TTA crops,
    calibrated probabilities) under each combination strategy, and the number of images scored."""
    shorter_side = largest_size(ensemble.crop_plan(tta=True))  # JPEG files decode as the service decodes them
    probabilities, labels = [], []
    for decoded, kept in readable_batches(images, range(len(images)), batch_size, "validation", shorter_side):
        probabilities.append(ensemble.member_probabilities([ensemble.preprocess(image, tta=True) for image in decoded], tta=True))
        labels += images.labels[kept].tolist()
    if not probabilities:
        raise ValueError("no readable validation image")
    probs, truth = np.concatenate(probabilities, axis=1), np.asarray(labels, dtype=np.int64)
    return {strategy: float(np.mean(predict_top1(probs, strategy) != truth)) for strategy in STRATEGIES}, len(truth)


def choose_strategy(errors: dict[str, float], current: str) -> str:
    """The strategy with the lowest validation error; ties keep ``current``."""
    return min(errors, key=lambda strategy: (errors[strategy], strategy != current))
