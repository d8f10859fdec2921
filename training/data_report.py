"""The ``productrec data`` report: the class histogram as text and as a plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from training.data import Splits




def format_histogram(splits: Splits, max_rows: int = 60, bar_width: int = 40) -> str:
    """The training split's class histogram as a text table with bars, plus the realised noise rate.

    With more than ``max_rows`` classes only the largest and smallest classes are listed.
    """
    n_classes = len(splits.label_names)
    counts = splits.class_counts
    clean = _bincount(splits.train.clean_labels, n_classes)
    val = _bincount(splits.val.labels, n_classes)
    test = _bincount(splits.test.labels, n_classes) if splits.test is not None else None
    lines = [
        f"Training split: {len(splits.train):,} images in {n_classes:,} classes; "
        f"imbalance of n(k) (its labels): {_imbalance(counts)}"
        + (f"; of the clean labels: {_imbalance(clean)}" if clean is not None else "")
    ]
    name_width = min(max(5, *(len(name) for name in splits.label_names)), 32)
    header = f"{'k':>6}  {'class':<{name_width}}  {'n(k)':>9}"
    header += f"  {'clean':>9}" if clean is not None else ""
    header += f"  {'val':>7}" + (f"  {'test':>7}" if test is not None else "")
    lines.append(header)

    def row(k: int) -> str:
        bar = "#" * max(int(round(bar_width * counts[k] / max(counts.max(), 1))), 1 if counts[k] else 0)
        text = f"{k:>6}  {splits.label_names[k][:name_width]:<{name_width}}  {counts[k]:>9,}"
        text += f"  {clean[k]:>9,}" if clean is not None else ""
        text += f"  {val[k]:>7,}" + (f"  {test[k]:>7,}" if test is not None else "")
        return f"{text}  {bar}"

    if n_classes <= max_rows:
        lines.extend(row(k) for k in range(n_classes))
    else:
        order = np.argsort(-counts, kind="stable")
        half = max_rows // 2
        lines.extend(row(int(k)) for k in order[:half])
        hidden = order[half:-half]
        low, high = counts[hidden].min(), counts[hidden].max()
        lines.append(f"{'':>6}  ... {len(hidden):,} classes with n(k) from {high:,} down to {low:,} ...")
        lines.extend(row(int(k)) for k in order[-half:])
    total = f"{'total':>6}  {'':<{name_width}}  {counts.sum():>9,}"
    total += f"  {clean.sum():>9,}" if clean is not None else ""
    total += f"  {val.sum():>7,}" + (f"  {test.sum():>7,}" if test is not None else "")
    lines.append(total)
    if splits.noise_rate_realised is None:
        lines.append("Label noise: unknown (no clean labels for this data set)")
    else:
        flipped = int(np.sum(splits.train.labels != splits.train.clean_labels))
        lines.append(
            f"Label noise realised: {splits.noise_rate_realised:.2%} of training labels "
            f"({flipped:,} of {len(splits.train):,}) differ from the clean labels"
        )
    return "\n".join(lines)


def _imbalance(counts: np.ndarray) -> str:
    return f"{counts.max():,}/{counts.min():,} = {counts.max() / max(int(counts.min()), 1):.1f}"


def _bincount(labels: np.ndarray | None, n_classes: int) -> np.ndarray | None:
    return None if labels is None else np.bincount(labels, minlength=n_classes)


def plot_histogram(splits: Splits, path: Path) -> None:
    """A PNG bar chart (log scale) of n(k); with clean labels, the clean profile beside it."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import; Figure renders with Agg

    n_classes = len(splits.label_names)
    positions = np.arange(n_classes)
    figure = Figure(figsize=(max(6.0, min(0.6 * n_classes, 16.0)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    clean = _bincount(splits.train.clean_labels, n_classes)
    if clean is None:
        axes.bar(positions, splits.class_counts, width=0.8, label="n(k): training labels")
    else:
        axes.bar(positions - 0.2, clean, width=0.4, label="clean labels (the long-tail profile)")
        axes.bar(positions + 0.2, splits.class_counts, width=0.4, label="n(k): training labels, with noise")
    axes.set_yscale("log")
    axes.set_ylabel("training images")
    axes.set_xlabel("class")
    if n_classes <= 40:
        axes.set_xticks(positions, splits.label_names, rotation=45, ha="right")
    noise = "unknown" if splits.noise_rate_realised is None else f"{splits.noise_rate_realised:.1%}"
    axes.set_title(f"Training split: {len(splits.train):,} images, {n_classes} classes, label noise {noise}")
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def print_skipped(skipped: Iterable[tuple[str, str]], limit: int = 50) -> None:
    skipped = list(skipped)
    print(f"Skipped files: {len(skipped)}")
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (each was logged as a warning)")
