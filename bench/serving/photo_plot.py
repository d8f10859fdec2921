"""docs/img/serving-photo.png from bench/results/serving-photo.json: ``python -m bench.serving.photo_plot``."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench import REPO

PREPROCESS_TARGETS_MS = {"plain": 2.5, "tta": 6.0}


def _throughput(axis, results: dict) -> None:
    plain, tta = results["plain"], results["tta"]
    bars = {
        "plain\nProductRec": statistics.mean(plain["productrec_images_per_s"]),
        "plain\nLitServe best": statistics.mean(plain["litserve_images_per_s"]),
        "plain\nlimit": statistics.mean(plain["limit_images_per_s"]),
        "TTA 5x3\nProductRec": statistics.mean(tta["productrec_images_per_s"]),
        "TTA 5x3\nlimit": statistics.mean(tta["limit_images_per_s"]),
    }
    axis.bar(list(bars), list(bars.values()), color=["tab:blue", "tab:orange", "tab:gray", "tab:blue", "tab:gray"])
    axis.set_yscale("log")
    axis.set_ylabel("images/s (log), steady, mean of the rounds")
    axis.set_title("concurrency 8, same run")
    axis.tick_params(axis="x", labelsize=8)


def _sweep(axis, results: dict) -> None:
    names = [f"PR {v['decode_workers']}d {v['inference_threads']}x{v['intra_op_threads']}t" for v in results["layouts"].values()]
    names += [f"LS {v['workers']}w x{v['threads']}t b{v['max_batch_size']}" for v in results["litserve_sweep"].values()]
    values = [v["images_per_s"] for v in results["layouts"].values()]
    values += [v["images_per_s"] for v in results["litserve_sweep"].values()]
    colours = ["tab:blue"] * len(results["layouts"]) + ["tab:orange"] * len(results["litserve_sweep"])
    axis.barh(names, values, color=colours)
    axis.set_xlabel("images/s, plain path, c=8")
    axis.set_title("sweep: ProductRec (PR) layouts, LitServe (LS) configurations")
    axis.tick_params(axis="y", labelsize=7)


def _preprocess(axis, results: dict) -> None:
    cost = results["preprocess_cpu_ms"]
    sizes = [size for size in cost["plain"] if size != "all"] + ["all"]
    width = 0.38
    for offset, path in ((-width / 2, "plain"), (width / 2, "tta")):
        color = "tab:blue" if path == "plain" else "tab:orange"
        axis.bar([i + offset for i in range(len(sizes))], [cost[path][s] for s in sizes], width, label=path, color=color)
        if f"decode_{path}" in cost:  # the part of each bar that is decoding, at the scale the resize needs
            axis.bar([i + offset for i in range(len(sizes))], [cost[f"decode_{path}"][s] for s in sizes], width,
                     fill=False, hatch="//", edgecolor="black", linewidth=0.5, label="its decoding" if path == "tta" else None)
        axis.axhline(PREPROCESS_TARGETS_MS[path], linestyle="--", linewidth=1, color=color, label=f"target {path}")
    axis.axhline(cost["decode_floor"], color="black", linewidth=1, label="floor: 1/8-scale decode")
    axis.set_xticks(range(len(sizes)), sizes, fontsize=8)
    axis.set_ylabel("CPU ms per photo")
    axis.set_title("preprocessing alone (decode_crops)")
    axis.legend(fontsize=7)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for axis, draw in zip(axes, (_throughput, _sweep, _preprocess)):
        draw(axis, results)
    machine = results["machine"]
    figure.suptitle(f"Photo case, {results['date']}, {machine['cpus']} CPUs, load average {machine['loadavg_start']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results" / "serving-photo.json"
    plot(json.loads(source.read_text()), REPO / "docs" / "img" / "serving-photo.png")
