"""The report's figures: per-class error against training count, and training curves (main setting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.plan import FAMILIES, LOSSES, MAIN, SETTINGS


def plot_per_class(cells: dict[str, Any], class_sizes: dict[str, list[Any]] | None, path: Path) -> None:
    """Per-class test error against the class's true training count n(k), one line per loss (main setting)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for loss, cell in cells.items():
        if not cell:
            continue
        sizes = class_sizes["clean"] if class_sizes else cell["class_counts"]
        order = np.argsort(sizes)
        counts = np.asarray(sizes, dtype=float)[order]
        axes.plot(counts, np.asarray(cell["per_class_error"])[order], marker="o", label=f"{loss} (n={cell['top1_error']['n']})")
    if class_sizes:
        for name, size in zip(class_sizes["label_names"], class_sizes["clean"]):
            axes.annotate(name, (size, 0.98), rotation=90, fontsize=7, ha="center", va="top", color="0.4")
    axes.set(xscale="log", xlabel="true training images of the class n(k)", ylabel="test error of the class (TTA)", ylim=(0, 1),
             title=f"per-class test error, {SETTINGS[MAIN].title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def plot_training_curves(runs: dict[str, Any], path: Path) -> None:
    """Validation and (noisy) training top-1 error per epoch, mean over seeds, one line per loss (main setting)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    val_axes, train_axes = figure.subplots(1, 2)
    for loss in LOSSES:
        curves = [run["curves"] for run in runs.values() if run["setting"] == MAIN and run["loss"] == loss and run["family"] == FAMILIES[0].name]
        if not curves:
            continue
        length = min(len(curve) for curve in curves)
        epochs = np.arange(1, length + 1)
        for axes, key in ((val_axes, "val_error"), (train_axes, "train_error")):
            axes.plot(epochs, np.mean([[record[key] for record in curve[:length]] for curve in curves], axis=0), marker="o", label=f"{loss} (n={len(curves)})")
    val_axes.set(title="validation top-1 error (clean labels)", xlabel="epoch", ylim=(0, 1))
    train_axes.set(title="training top-1 error against the noisy labels", xlabel="epoch", ylim=(0, 1))
    for axes in (val_axes, train_axes):
        axes.grid(True, alpha=0.3)
        axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
