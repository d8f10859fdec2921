"""On a CUDA machine: 2 epochs of DDP training with AMP, and the 50,000-class training step, GPU against CPU.

1. ``torchrun --nproc-per-node 1 -m app.cli train ... --device cuda --amp``: world size 1, backend nccl.
2. ``productrec train ... --nproc-per-node 2``: 2 processes sharing the GPU (gloo, since NCCL refuses two
   ranks on one device; nccl when there are 2 GPUs).
3. One SGD step of resnet10t with a 50,000-class head and BSCE (batch 128, 1x28x28): median time on the GPU
   (AMP) and on the CPU (fp32).

Data: Fashion-MNIST-LT when its files are installed, otherwise a generated 10-class ImageFolder.
Each training gets at most ``--train-timeout`` seconds; the whole script fits in about 8 minutes.

    python bench/ddp_gpu.py --out runs/gpu-check   # prints and writes <out>/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from training.config import DEFAULT_FMNIST_DIR  # noqa: E402
from training.losses import create_loss  # noqa: E402
from training.models import create_model  # noqa: E402


def dataset_options(out: Path) -> list[str]:
    if any(Path(DEFAULT_FMNIST_DIR).glob("train-images-idx3-ubyte*")):
        return []  # the default: Fashion-MNIST-LT
    root = out / "images"
    rng = np.random.default_rng(0)
    for label in range(10):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, size=(28, 28))
        for index in range(300):
            pixels = np.clip(base + rng.normal(0, 40, size=(28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"class{label}" / f"{index:03d}.png")
    return ["--dataset", str(root)]


def train_run(launcher: list[str], options: list[str], run_dir: Path, timeout: float) -> dict:
    """Run one training; its wall time, config.json's world record and metrics, or how it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    try:
        done = subprocess.run([*launcher, *options, "--output", str(run_dir)], cwd=REPO_ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}", "seconds": seconds}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "world": json.loads((run_dir / "config.json").read_text())["world"], "epochs": metrics}


def step_seconds(device: torch.device, classes: int, batch: int, repeats: int) -> float:
    """Median time of one forward/backward/SGD step of resnet10t with a ``classes``-way head and BSCE."""
    torch.manual_seed(0)
    model = create_model("resnet10t", classes, 1).to(device).train()
    counts = np.maximum(1, (5000 * 0.01 ** (np.arange(classes) / (classes - 1)))).astype(int).tolist()
    loss_fn = create_loss("bsce", counts).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 1, 28, 28, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    amp = device.type == "cuda"
    times = []
    for repeat in range(repeats + 2):  # two warm-up steps (cuDNN autotuning, allocator)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if amp:
            torch.cuda.synchronize()
        if repeat >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu-check")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-timeout", type=float, default=150)
    parser.add_argument("--classes", type=int, default=50_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    options = ["train", *dataset_options(args.out), "--model", args.model, "--epochs", "2", "--batch-size", str(args.batch_size),
               "--device", "cuda", "--amp", "--workers", "4"]
    python = [sys.executable]
    report: dict = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__}
    report["torchrun_world_1"] = train_run(
        [*python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "app.cli"],
        options, args.out / "world1", args.train_timeout,
    )
    report["nproc_per_node_2"] = train_run(
        [*python, "-m", "app.cli"], [*options, "--nproc-per-node", "2"], args.out / "world2", args.train_timeout
    )
    gpu = step_seconds(torch.device("cuda"), args.classes, args.batch_size, repeats=20)
    cpu = step_seconds(torch.device("cpu"), args.classes, args.batch_size, repeats=3)
    report["step_50k_classes"] = {"classes": args.classes, "batch": args.batch_size, "gpu_amp_s": gpu, "cpu_fp32_s": cpu, "speedup": cpu / gpu}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all("error" not in report[key] for key in ("torchrun_world_1", "nproc_per_node_2")) else 1


if __name__ == "__main__":
    sys.exit(main())
