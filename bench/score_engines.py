"""Offline scoring throughput, local engine against Ray: ``python -m bench.score_engines [--images 2000]``.

Scores the same folder of Fashion-MNIST test PNGs with ``productrec score``'s local engine and
with ``--engine ray`` at 1 and 2 inference actors, on one local Ray instance started once (its
start-up is reported on its own), all with the same settings: one decode worker (the local
engine's decode process, Ray's decode actor), one onnxruntime thread per session, batches of 32.
Each run's time includes loading the ensemble (the local engine once, each Ray actor its own)
and, for Ray, starting the actors. Ray's overhead per image is (Ray with 1 actor - local) / images.
Writes ``bench/results/score_engines.json`` and ``docs/img/score_engines.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "score_engines.json"
PLOT = ROOT / "docs" / "img" / "score_engines.png"
WORK = ROOT / "bench" / "runs" / "score_engines"
SETTINGS = {"decode_workers": 1, "intra_op_threads": 1, "max_batch_size": 32}


def write_images(folder: Path, count: int) -> Path:
    """``count`` Fashion-MNIST test images as PNGs, 1,000 per sub-folder."""
    from training.fashion_mnist import load_fashion_mnist

    _, _, images, _ = load_fashion_mnist(Path(os.environ.get("PRODUCTREC_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")))
    for index in range(count):
        target = folder / f"{index // 1000:02d}" / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index % len(images)]).save(target)
    return folder


def repository(path: Path | None) -> Path:
    """The repository given, or three untrained members (scripts/untrained_repository.py), made once."""
    if path is not None:
        return path
    made = WORK / "models"
    if not (made / "ensemble.json").exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        from untrained_repository import write_untrained_repository

        write_untrained_repository(made, Path("/usr/share/datasets/fashion-mnist"))
    return made


def timed_run(name: str, run, images: int, output: Path) -> dict:
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    started = time.perf_counter()
    summary = run(output)
    seconds = time.perf_counter() - started
    if summary.scored != images:
        raise SystemExit(f"{name}: scored {summary.scored} of {images}")
    print(f"{name}: {seconds:.1f} s, {images / seconds:.0f} images/s", flush=True)
    return {"engine": name, "seconds": seconds, "images_per_s": images / seconds}


def plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs = report["runs"]
    figure = Figure(figsize=(6.5, 3.6), layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar([run["engine"] for run in runs], [run["images_per_s"] for run in runs], color=["#4c72b0", "#dd8452", "#c44e52"])
    axes.bar_label(bars, fmt="%.0f")
    axes.set_ylabel("images/s (whole run)")
    axes.set_title(
        f"productrec score, {report['images']:,} images, {report['machine']['cpus']} CPU cores\n"
        f"(Ray start-up {report['ray_start_s']:.1f} s not included)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repository", type=Path, help="model repository (default: three untrained members)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)

    from app.core.config import Settings
    from app.score import score
    from app.score_ray import RayOptions, ray_session, score_ray

    models = repository(args.repository)
    folder = WORK / f"images-{args.images}"
    if not folder.exists():
        write_images(folder, args.images)
    settings = Settings(_env_prefix="PRODUCTREC_BENCH_UNUSED_", repository=models, **SETTINGS)
    runs = [timed_run("local", lambda out: score(folder, out, settings, progress=False), args.images, WORK / "local.csv")]
    started = time.perf_counter()
    with ray_session(RayOptions(cpus=3), settings):
        ray_start_s = time.perf_counter() - started
        for actors in (1, 2):
            options = RayOptions(actors=actors)
            run = lambda out, options=options: score_ray(folder, out, settings, options, progress=False)  # noqa: E731
            runs.append(timed_run(f"ray, {actors} actor{'s' * (actors > 1)}", run, args.images, WORK / f"ray{actors}.csv"))
    report = {
        "command": "python -m bench.score_engines " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "images": args.images,
        "settings": SETTINGS,
        "ray_start_s": ray_start_s,
        "runs": runs,
        "ray_overhead_ms_per_image": (runs[1]["seconds"] - runs[0]["seconds"]) / args.images * 1000,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.plot)
    print(f"Ray start-up {ray_start_s:.1f} s; Ray's overhead {report['ray_overhead_ms_per_image']:.2f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
