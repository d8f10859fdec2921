"""The report's figures: per-class error against training count, training curves with the memorisation monitor,
and susceptibility against the measured memorisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.plan import LOSSES, MAIN, SETTINGS


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colour(loss: str) -> Any:
    from matplotlib import colormaps

    return colormaps["tab20"](LOSSES.index(loss) / max(len(LOSSES) - 1, 1))


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def plot_per_class(cells: dict[str, Any], class_sizes: dict[str, list[Any]] | None, path: Path) -> None:
    """Per-class test error against the class's true training count n(k), one line per loss (main setting)."""
    figure = _figure(8, 5)
    axes = figure.add_subplot()
    for loss, cell in cells.items():
        if not cell:
            continue
        sizes = class_sizes["clean"] if class_sizes else cell["class_counts"]
        order = np.argsort(sizes)
        axes.plot(np.asarray(sizes, dtype=float)[order], np.asarray(cell["per_class_error"])[order], marker="o", color=_colour(loss), label=loss)
    axes.set(xscale="log", xlabel="true training images of the class n(k)", ylabel="test error of the class", ylim=(0, 1),
             title=f"per-class test error, {SETTINGS[MAIN].title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(ncol=2, fontsize=8)
    _save(figure, path)


def plot_training_curves(runs: dict[str, Any], setting: str, path: Path) -> None:
    """Validation error, training error against the (noisy) labels and susceptibility ζ per epoch, mean over seeds."""
    figure = _figure(15, 4.2)
    panels = figure.subplots(1, 3)
    keys = (("val_error", "validation top-1 error (clean labels)"), ("train_error", "training error against the noisy labels"),
            ("susceptibility", "susceptibility ζ (random-label loss drop)"))
    for loss in LOSSES:
        curves = [run["curves"] for run in runs.values() if run["setting"] == setting and run["loss"] == loss]
        if not curves:
            continue
        length = min(len(curve) for curve in curves)
        epochs = np.arange(1, length + 1)
        for axes, (key, _) in zip(panels, keys):
            values = np.mean([[record[key] if record.get(key) is not None else np.nan for record in curve[:length]] for curve in curves], axis=0)
            axes.plot(epochs, values, color=_colour(loss), linewidth=2.5 if loss == "ce" else 1.2, label=loss)
    noise = SETTINGS[setting].noise_rate
    if noise:
        panels[1].axhline(noise, color="0.3", linestyle="--", linewidth=1, label=f"noise rate {noise:.0%}")
    for axes, (_, title) in zip(panels, keys):
        axes.set(title=title, xlabel="epoch")
        axes.grid(True, alpha=0.3)
    panels[0].legend(ncol=2, fontsize=7)
    figure.suptitle(SETTINGS[setting].title)
    _save(figure, path)


def plot_susceptibility_vs_memorisation(runs: dict[str, Any], path: Path) -> None:
    """Each noisy run: ζ (running mean up to the best epoch) against the share of flipped labels its best model predicts."""
    figure = _figure(6.5, 4.5)
    axes = figure.add_subplot()
    markers = {name: marker for name, marker in zip(SETTINGS, "osD^")}
    for run in runs.values():
        memorised = run["memorisation"]
        if not memorised or memorised["predicts_noisy_label"] is None:
            continue
        axes.scatter(run["susceptibility_at_best"], memorised["predicts_noisy_label"], color=_colour(run["loss"]), marker=markers[run["setting"]], s=22)
    for name, marker in markers.items():
        if SETTINGS[name].noise_rate:
            axes.scatter([], [], color="0.4", marker=marker, label=SETTINGS[name].title)
    axes.set(xlabel="susceptibility ζ (mean up to the best epoch; no clean labels needed)",
             ylabel="flipped training labels predicted (needs clean labels)", title="memorisation monitor against measured memorisation")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)
