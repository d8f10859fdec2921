"""``python -m bench.photos``: the served ensemble on the official test images, stored (28 px) and as photos.

Two renderings of the 10,000 Fashion-MNIST test images, both the product on white:

- ``28px``: the stored images negated back (``training.fashion_mnist.as_shot``), as 28x28 PNGs;
- ``photo``: each one as a user photo (``training.photo_render``): RGB, a random size of 400-1000 px, JPEG
  at a random quality of 70-95, seeded.

Both go through the service's path: ``decode_crops`` (the decode worker's) and the ``Ensemble`` engine.
Also reported: the ``samples/`` photos, each member's calibration and the ensemble's average-k sets on validation.
"""

from __future__ import annotations

import argparse
import json
import re
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from app.contract.calibration import set_coverage
from app.contract.preprocess import CropPlan, decode_crops
from app.contract.ranking import predict_top1
from app.engine.ensemble import Ensemble
from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist_as_shot
from training.photo_render import as_photo, encode

MAX_PIXELS = 40_000_000
SIZES, QUALITIES = (400, 1000), (70, 95)
SAMPLE_NAME = re.compile(r"^(\d+)_")
BEGIN, END = "<!-- bench.photos: begin -->", "<!-- bench.photos: end -->"


def render(pixels: np.ndarray, rendering: str, rng: np.random.Generator) -> bytes:
    """One test image as a file in ``rendering`` ("28px" or "photo")."""
    if rendering == "28px":
        return encode(Image.fromarray(pixels), "PNG")
    size = int(rng.integers(SIZES[0], SIZES[1] + 1))
    return encode(as_photo(pixels, size), "JPEG", int(rng.integers(QUALITIES[0], QUALITIES[1] + 1)))


def _crops(task: tuple[np.ndarray, str, int, CropPlan]) -> list[np.ndarray]:
    pixels, rendering, seed, plan = task
    return decode_crops(render(pixels, rendering, np.random.default_rng(seed)), plan, MAX_PIXELS)


def top1(ensemble: Ensemble, crops: Sequence[list[np.ndarray]], batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's top-1 ``[N]`` and the member probabilities ``[M, N, K]``, with TTA."""
    probs = np.concatenate([ensemble.member_probabilities(crops[i : i + batch], tta=True) for i in range(0, len(crops), batch)], axis=1)
    return predict_top1(probs, ensemble.strategy), probs


def rendering_error(ensemble: Ensemble, images: np.ndarray, labels: np.ndarray, rendering: str, seed: int, workers: int) -> float:
    """Top-1 error of the ensemble on ``images`` rendered as ``rendering`` (seeded per image)."""
    plan = ensemble.crop_plan(tta=True)
    tasks = [(pixels, rendering, seed * 1_000_003 + index, plan) for index, pixels in enumerate(images)]
    with get_context("spawn").Pool(workers) as pool:
        crops = pool.map(_crops, tasks, chunksize=64)
    predicted, _ = top1(ensemble, crops)
    return float(np.mean(predicted != labels))


def sample_answers(ensemble: Ensemble, samples: Path, test_labels: np.ndarray) -> list[dict[str, Any]]:
    """Each ``samples/`` photo (named ``<test index>_<class>.jpg``): its true class and the ensemble's answer."""
    plan = ensemble.crop_plan(tta=True)
    answers = []
    for path in sorted(samples.glob("*.jpg"), key=lambda p: int(SAMPLE_NAME.match(p.name).group(1))):  # type: ignore[union-attr]
        predicted, _ = top1(ensemble, [decode_crops(path.read_bytes(), plan, MAX_PIXELS)])
        truth = int(test_labels[int(SAMPLE_NAME.match(path.name).group(1))])  # type: ignore[union-attr]
        answers.append({"file": path.name, "label": FASHION_MNIST_LABELS[truth], "answer": FASHION_MNIST_LABELS[int(predicted[0])]})
    return answers


def label_sets(ensemble: Ensemble, max_k: int = 5) -> dict[str, Any]:
    """Average-k sets of the ensemble on its validation split: mean size, share of sizes, coverage per k."""
    from training.config import DataConfig
    from training.data import build_splits

    val = build_splits(DataConfig(**ensemble.members[0].manifest.train_config["data"])).val
    crops = [ensemble.preprocess(val.load(index), tta=True) for index in range(len(val))]
    _, probs = top1(ensemble, crops)
    mean_probs = probs.mean(axis=0)
    report = {}
    for k in range(1, min(max_k, ensemble.max_average_k) + 1):
        threshold = ensemble.label_set_threshold(k)
        sizes = np.maximum((mean_probs >= threshold).sum(axis=1), 1)
        report[str(k)] = {
            "threshold": threshold,
            "mean_size": float(sizes.mean()),
            "size_range": [int(sizes.min()), int(sizes.max())],
            "coverage": set_coverage(mean_probs, val.labels, threshold),
        }
    return report


def calibration(ensemble: Ensemble) -> dict[str, Any]:
    """Each member's manifest record: T, ECE before and after, validation images."""
    return {
        m.manifest.name: {key: getattr(m.manifest.calibration, key) for key in ("temperature", "ece_before", "ece_after", "validation_images")}
        for m in ensemble.members
        if m.manifest.calibration is not None
    }


STRATEGY_WORDS = {"vote": "top-1 vote", "mean": "mean probability"}  # app.contract.ranking's strategies


def section(result: dict[str, Any]) -> str:
    """The "Photos as shot" section of docs/results.md, from ``result``."""
    errors = result["top1_error"]
    lines = [
        BEGIN,
        "## Photos as shot (default ensemble; `python -m bench.photos --report docs/results.md`)",
        "",
        f"Top-1 error of `{result['repository']}` (TTA, {STRATEGY_WORDS[result.get('strategy', 'vote')]}) on the {result['test_images']:,} official test images,",
        "both renderings the product on white, through the service's decode and engine:",
        "",
        "| rendering | top-1 error |",
        "|---|---|",
        f"| stored 28 px (negated back), PNG | {errors['28px']:.4f} |",
        f"| photo: RGB JPEG, {SIZES[0]}-{SIZES[1]} px, quality {QUALITIES[0]}-{QUALITIES[1]} (seeded) | {errors['photo']:.4f} |",
        "",
        f"Photo minus 28 px: {result['photo_minus_28px'] * 100:+.2f} points (bar: at most +1). "
        f"`samples/`: {result['samples_right']}/10 right (bar: 8): "
        + ", ".join(f"{a['label']} → {a['answer']}" for a in result["samples"] if a["label"] != a["answer"]),
        "",
        "Calibration fitted at export on each member's validation split (TTA-averaged logits):",
        "",
        "| member | T | ECE before | ECE after |",
        "|---|---|---|---|",
        *(f"| {name} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} |" for name, c in result["calibration"].items()),
        "",
        "Average-k label sets of the ensemble on validation (threshold on the mean of the members' calibrated",
        "probabilities: the mean of their own thresholds):",
        "",
        "| k | mean set size | sizes | coverage |",
        "|---|---|---|---|",
        *(f"| {k} | {v['mean_size']:.2f} | {v['size_range'][0]}-{v['size_range'][1]} | {v['coverage']:.4f} |" for k, v in result["average_k_on_validation"].items()),
        END,
    ]
    return "\n".join(lines)


def write_section(result: dict[str, Any], path: Path) -> None:
    """Put the section into ``path``: in place of an earlier one, else at the end."""
    text = path.read_text() if path.exists() else ""
    new = section(result)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + new + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--samples", type=Path, default=Path("samples"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images (default: all 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/photos.json"))
    parser.add_argument("--report", type=Path, default=None, help="also write the section into this Markdown file")
    args = parser.parse_args(argv)
    ensemble = Ensemble.load(args.repository, "cpu")
    _, _, images, labels = load_fashion_mnist_as_shot(args.fmnist_dir)
    images, labels = images[: args.limit], labels[: args.limit]
    errors = {r: rendering_error(ensemble, images, labels, r, args.seed, args.workers) for r in ("28px", "photo")}
    samples = sample_answers(ensemble, args.samples, load_fashion_mnist_as_shot(args.fmnist_dir)[3])
    result = {
        "repository": str(args.repository),
        "strategy": ensemble.strategy,
        "test_images": int(len(labels)),
        "top1_error": errors,
        "photo_minus_28px": errors["photo"] - errors["28px"],
        "samples_right": sum(a["label"] == a["answer"] for a in samples),
        "samples": samples,
        "calibration": calibration(ensemble),
        "average_k_on_validation": label_sets(ensemble),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.report:
        write_section(result, args.report)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    for answer in samples:
        print(f"  {answer['file']:<24} {answer['label']:<12} -> {answer['answer']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
