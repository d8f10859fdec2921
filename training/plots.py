"""PNG plots of training curves and per-class accuracy (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure  # a Figure renders with Agg; pyplot's global state is not needed

from training.memorisation import running_mean


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Training loss, train/validation top-1 error, susceptibility ζ (the memorisation monitor) and learning rate per epoch."""
    epochs = [record["epoch"] for record in records]
    figure = Figure(figsize=(16, 3.6), layout="constrained")
    loss_axes, error_axes, memorisation_axes, lr_axes = figure.subplots(1, 4)
    loss_axes.plot(epochs, [record["train_loss"] for record in records], marker="o")
    loss_axes.set(title="training loss", xlabel="epoch")
    error_axes.plot(epochs, [record["train_error"] for record in records], marker="o", label="train (noisy labels)")
    error_axes.plot(epochs, [record["val_error"] for record in records], marker="o", label="validation")
    error_axes.set(title="top-1 error", xlabel="epoch", ylim=(0, 1))
    error_axes.legend()
    monitored = [record for record in records if record.get("susceptibility") is not None]
    if monitored:
        values = [record["susceptibility"] for record in monitored]
        memorisation_axes.plot([record["epoch"] for record in monitored], values, marker="o", label="ζ(t)")
        memorisation_axes.plot([record["epoch"] for record in monitored], running_mean(values), label="mean so far")
        memorisation_axes.legend()
    memorisation_axes.set(title="susceptibility ζ: random-label loss drop", xlabel="epoch")
    lr_axes.plot(epochs, [record["lr"] for record in records], marker="o", drawstyle="steps-post")
    lr_axes.set(title="learning rate", xlabel="epoch", yscale="log")
    _save(figure, path)


def plot_per_class_accuracy(
    class_counts: Sequence[int],
    accuracies: dict[str, Sequence[float]],
    path: Path,
    title: str = "per-class test accuracy",
) -> None:
    """Per-class accuracy of each model against the class's training count (log x axis)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    counts = np.maximum(np.asarray(class_counts, dtype=float), 1)
    for name, accuracy in accuracies.items():
        axes.scatter(counts, accuracy, label=name, alpha=0.75)
    axes.set(xscale="log", xlabel="training images of the class n(k)", ylabel="test accuracy", ylim=(-0.02, 1.02), title=title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
