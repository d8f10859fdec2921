"""docs/img/serving-benchmark.png: throughput, ratio to the limit and latency of every point, per case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.serving.cases import TARGET_RATIO
from bench.serving.results import is_bounded, point_label, ratio_bound


def _throughput(axis, case: dict, x: np.ndarray) -> None:
    points = case["points"]
    axis.bar(x - 0.2, [p["images_per_s"] for p in points], 0.4, label="service end-to-end")
    axis.bar(x + 0.2, [p["limit_images_per_s"] for p in points], 0.4, label="limit: raw onnxruntime")
    axis.set_ylabel("images/s")
    axis.set_title(f"{case['case']}: throughput")
    axis.legend(fontsize=8)


def _ratio(axis, case: dict, x: np.ndarray) -> None:
    points = case["points"]
    colours = ["tab:green" if p["ratio"] >= TARGET_RATIO else "tab:red" for p in points]
    axis.bar(x, [p["ratio"] for p in points], 0.6, color=colours)
    axis.errorbar(
        x,
        [p["ratio"] for p in points],
        yerr=[
            [p["ratio"] - min(p["round_ratios"]) for p in points],
            [max(p["round_ratios"]) - p["ratio"] for p in points],
        ],
        fmt="none",
        ecolor="black",
        capsize=3,
    )
    axis.axhline(TARGET_RATIO, color="black", linestyle="--", linewidth=1, label=f"target {TARGET_RATIO}")
    if case.get("http_floors"):
        bounded = [i for i, p in enumerate(points) if is_bounded(p)]
        axis.scatter(
            bounded, [ratio_bound(case, points[i]) for i in bounded], marker="_", s=600, color="black",
            label="bound: limit / (limit + HTTP floor + decoding)",
        )
    axis.set_ylim(0, max(1.1, max(p["ratio"] for p in points) * 1.1))
    axis.set_ylabel("end-to-end / limit")
    axis.set_title(f"{case['case']}: ratio to the limit (bars: min..max over rounds)")
    axis.legend(fontsize=8)


def _latency(axis, case: dict, x: np.ndarray) -> None:
    for key, offset in (("p50", -0.25), ("p95", 0.0), ("p99", 0.25)):
        axis.bar(x + offset, [p["latency_ms"][key] for p in case["points"]], 0.25, label=key)
    axis.set_yscale("log")
    axis.set_ylabel("latency (ms, log)")
    axis.set_title(f"{case['case']}: client latency")
    axis.legend(fontsize=8)


def plot(results: dict, path: Path) -> None:
    """One row of three panels per case: throughput, ratio to the limit, client latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    figure, axes = plt.subplots(len(cases), 3, figsize=(15, 4.2 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        labels = [point_label(point) for point in case["points"]]
        x = np.arange(len(labels))
        for axis, draw in zip(axes[row], (_throughput, _ratio, _latency)):
            draw(axis, case, x)
            axis.set_xticks(x, labels, fontsize=8)
    figure.suptitle(f"Serving vs raw onnxruntime on {results['machine']['cpus']} CPUs (batching on/off, concurrency c)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
