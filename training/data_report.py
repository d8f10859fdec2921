"""The ``productrec data`` report: the class histogram (text or plot), the validation rule and the catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    from training.catalogue import CatalogueReport, SizeStats
    from training.data import Splits

# Above this many classes the text report has no per-class rows; --plot draws the sorted counts instead.
MAX_CLASS_ROWS = 60


def format_histogram(splits: Splits, max_rows: int = MAX_CLASS_ROWS, bar_width: int = 40) -> str:
    """The training split's class histogram as a text table with bars, plus the realised noise rate.

    With more than ``max_rows`` classes, a summary of n(k) instead of the rows.
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
    if n_classes > max_rows:
        lines.append(
            f"n(k) per class: max {counts.max():,}, median {np.median(counts):g}, min {counts.min():,} "
            f"(no per-class rows above {max_rows} classes; --plot PATH draws the sorted counts)"
        )
        lines.append(_noise_line(splits))
        return "\n".join(lines)
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

    lines.extend(row(k) for k in range(n_classes))
    total = f"{'total':>6}  {'':<{name_width}}  {counts.sum():>9,}"
    total += f"  {clean.sum():>9,}" if clean is not None else ""
    total += f"  {val.sum():>7,}" + (f"  {test.sum():>7,}" if test is not None else "")
    lines.append(total)
    lines.append(_noise_line(splits))
    return "\n".join(lines)


def _noise_line(splits: Splits) -> str:
    if splits.noise_rate_realised is None:
        return "Label noise: unknown (no clean labels for this data set)"
    flipped = int(np.sum(splits.train.labels != splits.train.clean_labels))
    return (
        f"Label noise realised: {splits.noise_rate_realised:.2%} of training labels "
        f"({flipped:,} of {len(splits.train):,}) differ from the clean labels"
    )


def format_validation(summary: dict[str, Any]) -> str:
    """The validation rule and the classes it covers (``training.data.validation_summary``)."""
    return f"Validation split: {summary.get('description', 'unknown')}\n  {summary['error_over']}"


def format_catalogue_report(report: CatalogueReport) -> str:
    """The catalogue's figures as a few lines of text."""
    below = " / ".join(map(str, report.classes_below))
    below_counts = " / ".join(f"{n:,}" for n in report.classes_below.values())
    lines = [
        f"Catalogue {report.location} (every usable image, before the validation split): "
        f"{report.images:,} images in {report.classes:,} classes",
        f"  imbalance ratio n_max/n_min: {report.largest_class:,}/{report.smallest_class:,} = {report.imbalance_ratio:.1f}",
        f"  classes with fewer than {below} images: {below_counts}",
        f"  duplicate files (same content) within a class: {report.duplicates_within_class:,}; "
        f"classes with duplicates: {report.classes_with_duplicates:,}",
        f"  contents under several classes (label noise?): {report.cross_class_contents:,}; "
        f"their images: {report.cross_class_images:,}; classes: {report.cross_class_classes:,}",
    ]
    lines += [f"    e.g. {path}: {_first(classes)}" for path, classes in report.cross_class_examples]
    lines.append(f"  image width {_sizes(report.width)}, height {_sizes(report.height)} pixels (min / median / max)")
    return "\n".join(lines)


def _first(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit:,} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _sizes(stats: SizeStats) -> str:
    return f"{stats.min:,} / {stats.median:g} / {stats.max:,}"


def _imbalance(counts: np.ndarray) -> str:
    return f"{counts.max():,}/{counts.min():,} = {counts.max() / max(int(counts.min()), 1):.1f}"


def _bincount(labels: np.ndarray | None, n_classes: int) -> np.ndarray | None:
    return None if labels is None else np.bincount(labels, minlength=n_classes)


def plot_histogram(splits: Splits, path: Path, max_bars: int = MAX_CLASS_ROWS) -> None:
    """A PNG bar chart (log scale) of n(k); with clean labels, the clean profile beside it.

    Above ``max_bars`` classes, the counts sorted from the largest class down instead.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import; Figure renders with Agg

    n_classes = len(splits.label_names)
    if n_classes > max_bars:
        _plot_sorted_counts(splits, Path(path), Figure(figsize=(9.0, 4.5), layout="constrained"))
        return
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
    _save(figure, Path(path))


def _plot_sorted_counts(splits: Splits, path: Path, figure: Any) -> None:
    counts = np.sort(splits.class_counts)[::-1]
    ranks = np.arange(1, counts.size + 1)
    axes = figure.add_subplot()
    axes.fill_between(ranks, counts, step="post", alpha=0.4)
    axes.step(ranks, counts, where="post")
    axes.set_yscale("log")
    axes.set_xlim(1, counts.size)
    axes.set_xlabel("class rank (largest first)")
    axes.set_ylabel("training images")
    axes.set_title(
        f"Training split: {len(splits.train):,} images, {counts.size:,} classes; "
        f"n(k) from {counts[0]:,} down to {counts[-1]:,}"
    )
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def print_skipped(skipped: Iterable[tuple[str, str]], limit: int = 50) -> None:
    skipped = list(skipped)
    print(f"Skipped files: {len(skipped)}")
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (each was logged as a warning)")
