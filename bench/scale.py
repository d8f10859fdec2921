"""The whole path at 50,000 classes: ``python -m bench.scale [--classes 50000] [--work DIR]``.

Builds a long-tailed CSV catalogue of K classes over a few thousand Fashion-MNIST training
images (n(k) = n_max * rho^(-k/(K-1)), rounded, at least 1: the point is the scale, not the
accuracy), then runs every step of the path as its own process, as a user would:
``productrec data``, one epoch of BSCE training, ``evaluate``, ``export`` (ONNX plus a manifest
of K labels and counts), ``serve`` (one ``/v1/predict`` and one v2 ``infer`` with
``class_count=5`` through tritonclient.http) and ``score`` (local engine; ``--ray`` adds the
Ray engine). Each phase's wall time and peak resident memory (its process tree's, from
``os.wait4``) go to ``bench/results/scale.json`` and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.json"
# The phases run in the work folder; this checkout's app/ and training/ come first on their path.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
MODEL_KWARGS = ["channels=(8,16,32,64)", "stem_width=8"]  # resnet10t at 1/8 width: 64 features, a 64 x K head


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    peak_rss_mib: float
    command: str
    detail: str = ""


def long_tail(classes: int, n_max: int, rho: float) -> np.ndarray:
    """Images per class, from ``n_max`` down to ``n_max / rho`` (at least 1), geometrically."""
    return np.maximum(1, np.rint(n_max * rho ** (-np.arange(classes) / max(classes - 1, 1)))).astype(np.int64)


def build_catalogue(
    work: Path, classes: int, n_max: int, rho: float, distinct: int, held_out_rows: int, seed: int
) -> dict:
    """``distinct`` PNGs; train, validation and test manifests over them (class names c00000...)."""
    from training.fashion_mnist import load_fashion_mnist

    images, _, _, _ = load_fashion_mnist(Path(os.environ.get("PRODUCTREC_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")))
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(distinct):
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    rng = np.random.default_rng(seed)
    counts = long_tail(classes, n_max, rho)
    labels = np.repeat(np.arange(classes), counts)
    files = rng.integers(0, distinct, labels.size)
    names = [f"c{k:05d}" for k in range(classes)]
    write_manifest(work / "train.csv", files, labels, names)
    for split in ("val", "test"):  # small held-out sets: a validation pass every epoch is not the point here
        split_labels = rng.integers(0, classes, held_out_rows)
        write_manifest(work / f"{split}.csv", rng.integers(0, distinct, held_out_rows), split_labels, names)
    return {
        "classes": classes,
        "train_rows": int(labels.size),
        "distinct_files": distinct,
        "n_max": n_max,
        "n_min": int(counts.min()),
        "val_rows": held_out_rows,
        "test_rows": held_out_rows,
    }


def write_manifest(path: Path, files: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((f"images/{file:05d}.png", names[label]) for file, label in zip(files, labels))


def run_phase(name: str, argv: list[str], log: Path) -> Phase:
    """``argv`` to its end, its output in ``log``; its time and peak RSS (the largest process of its tree)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=ENV)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed ({status}); see {log}:\n{log.read_text()[-3000:]}")
    return Phase(name, seconds, usage.ru_maxrss / 1024, " ".join(argv[2:] if argv[1] == "-m" else argv))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_phase(productrec: list[str], repository: Path, image: Path, log: Path) -> Phase:
    """``productrec serve`` until ready, one /v1/predict and one v2 infer with class_count=5, then SIGINT."""
    import httpx
    import tritonclient.http as triton

    port = free_port()
    argv = [*productrec, "serve", "--repository", str(repository), "--port", str(port), "--workers", "1"]
    started = time.perf_counter()
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=ENV)
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"serve exited; see {log}")
            time.sleep(0.5)
        ready_s = time.perf_counter() - started
        data = image.read_bytes()
        began = time.perf_counter()
        answer = httpx.post(f"{base}/v1/predict", files={"file": ("x.png", data, "image/png")}, timeout=60).json()
        v1_ms = (time.perf_counter() - began) * 1000
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        name = json.loads((repository / "ensemble.json").read_text())["name"]
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        began = time.perf_counter()
        classes = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=5)])
        v2_ms = (time.perf_counter() - began) * 1000
        top = [entry.decode() for entry in classes.as_numpy("probabilities")[0]]
        server.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(server.pid, 0)
    v1_top = [label["label"] for label in answer["labels"]]
    detail = f"ready in {ready_s:.1f} s; /v1/predict {v1_ms:.0f} ms (top-5 {v1_top}); v2 class_count=5 {v2_ms:.0f} ms ({top[0]}, ...)"
    if [entry.split(":", 2)[2] for entry in top] != v1_top:
        raise SystemExit(f"v1 and v2 disagree: {v1_top} vs {top}")
    return Phase("serve", time.perf_counter() - started, usage.ru_maxrss / 1024, " ".join(argv[2:]), detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50_000)
    parser.add_argument("--n-max", type=int, default=2, help="images of the largest class")
    parser.add_argument("--rho", type=float, default=2.0, help="n_max / n_min")
    parser.add_argument("--distinct", type=int, default=3000, help="distinct image files the rows reference")
    parser.add_argument("--held-out-rows", type=int, default=2000, help="rows of the validation and test manifests")
    parser.add_argument("--score-rows", type=int, default=1000, help="rows of the test manifest scored")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "runs" / "scale")
    parser.add_argument("--ray", action="store_true", help="also score with --engine ray")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    productrec = [sys.executable, "-m", "app.cli"]
    phases = []

    started = time.perf_counter()
    catalogue = build_catalogue(work, args.classes, args.n_max, args.rho, args.distinct, args.held_out_rows, seed=0)
    phases.append(Phase("build catalogue", time.perf_counter() - started, 0.0, "bench.scale (in process)", json.dumps(catalogue)))
    with open(work / "test.csv") as handle:
        (work / "score.csv").write_text("".join(line for _, line in zip(range(args.score_rows + 1), handle)))
    run, repository = work / "run", work / "models"
    steps = [
        ("data", ["data", "--dataset", "train.csv", "--val-dataset", "val.csv", "--plot", "classes.png"]),
        ("train (1 epoch, bsce)", [
            "train", "--dataset", "train.csv", "--val-dataset", "val.csv", "--test-dataset", "test.csv", "--model", "resnet10t",
            "--model-kwargs", *MODEL_KWARGS, "--loss", "bsce", "--epochs", "1", "--batch-size", "256",
            "--workers", "1", "--device", "cpu", "--input-size", "28", "--tta-sizes", "28", "32",
            "--output", str(run), "--no-resume",
        ]),
        ("evaluate", ["evaluate", str(run), "--device", "cpu", "--batch-size", "256"]),
        ("export", ["export", str(run), "--repository", str(repository), "--ensemble-member", "--check-images", "8"]),
    ]
    for name, options in steps:
        phases.append(run_phase(name, [*productrec, *options], work / f"{name.split()[0]}.log"))
        print(f"{phases[-1].name}: {phases[-1].seconds:.1f} s, {phases[-1].peak_rss_mib:.0f} MiB", flush=True)
    phases.append(serve_phase(productrec, repository, work / "images" / "00000.png", work / "serve.log"))
    engines = ["local", "ray"] if args.ray else ["local"]
    for engine in engines:
        options = ["score", "score.csv", "--out", f"scores-{engine}.csv", "--repository", str(repository), "--no-progress", "--engine", engine]
        phases.append(run_phase(f"score ({engine}, {args.score_rows} images)", [*productrec, *options], work / f"score-{engine}.log"))
    for phase in phases[-1 - len(engines):]:
        print(f"{phase.name}: {phase.seconds:.1f} s, {phase.peak_rss_mib:.0f} MiB", flush=True)

    report = {
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "catalogue": catalogue,
        "phases": [asdict(phase) for phase in phases],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(phases))
    return 0


def markdown_table(phases: list[Phase]) -> str:
    lines = ["| phase | wall time (s) | peak RSS (MiB) |", "|---|---:|---:|"]
    lines += [f"| {phase.name} | {phase.seconds:.1f} | {phase.peak_rss_mib:.0f} |" for phase in phases]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
