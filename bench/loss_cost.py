"""Training cost of BSCE against plain cross entropy as the number of classes grows.

For each K, forward+backward time (median of interleaved repeats) and peak memory
of ``F.cross_entropy`` and of ``create_loss("bsce")`` on the same logits, both for
the loss alone and with the classifier head (features @ W) that produces the
logits. Reports the ratio BSCE / CE; the target is <= 1.10 at K = 50,000.

    python -m bench.loss_cost   # writes bench/results/loss_cost.json and docs/img/loss_cost.png
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench import REPO
from training.losses import create_loss


def _status_bytes(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


def peak_memory_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory a step adds above what was resident before it.

    CUDA: the allocator's peak. CPU: the process's peak RSS (VmHWM), reset
    through /proc/self/clear_refs before the step.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_bytes("VmRSS")
    step()
    return (_status_bytes("VmHWM") - base) / 2**20


def time_step(step: Callable[[], None], device: torch.device) -> float:
    """Wall time of one step, synchronised on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(n_classes: int, batch: int, features: int, repeats: int, device: torch.device, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n_classes, (batch,), generator=generator).to(device)
    counts = torch.randint(1, 1000, (n_classes,), generator=generator)
    bsce = create_loss("bsce", counts).to(device)
    logits = torch.randn(batch, n_classes, generator=generator).to(device).requires_grad_()
    feats = torch.randn(batch, features, generator=generator).to(device)
    head = torch.nn.Linear(features, n_classes).to(device)

    def loss_only(loss_fn: Callable) -> Callable[[], None]:
        def step() -> None:
            logits.grad = None
            loss_fn(logits, target).backward()

        return step

    def with_head(loss_fn: Callable) -> Callable[[], None]:
        def step() -> None:
            head.zero_grad(set_to_none=True)
            loss_fn(head(feats), target).backward()

        return step

    variants = {
        ("loss", "ce"): loss_only(F.cross_entropy),
        ("loss", "bsce"): loss_only(bsce),
        ("head+loss", "ce"): with_head(F.cross_entropy),
        ("head+loss", "bsce"): with_head(bsce),
    }
    for step in variants.values():  # warm-up: allocator, kernels, page faults
        step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(repeats):  # interleaved, so drift and other load hit both alike
        for key, step in variants.items():
            times[key].append(time_step(step, device))
    memory = {key: peak_memory_mib(step, device) for key, step in variants.items()}
    rows = {}
    for scope in ("loss", "head+loss"):
        ce_ms = statistics.median(times[(scope, "ce")]) * 1e3
        bsce_ms = statistics.median(times[(scope, "bsce")]) * 1e3
        rows[scope] = {
            "ce_ms": ce_ms,
            "bsce_ms": bsce_ms,
            "time_ratio": bsce_ms / ce_ms,
            "ce_peak_mib": memory[(scope, "ce")],
            "bsce_peak_mib": memory[(scope, "bsce")],
            # below a page or so the RSS reading is zero and a ratio means nothing
            "memory_ratio": memory[(scope, "bsce")] / memory[(scope, "ce")] if memory[(scope, "ce")] >= 1 else None,
        }
    return {"classes": n_classes, **{f"{scope}:{k}": v for scope, row in rows.items() for k, v in row.items()}}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [row["classes"] for row in results]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for scope, style in (("loss", "-o"), ("head+loss", "--s")):
        axes[0].plot(classes, [row[f"{scope}:time_ratio"] for row in results], style, label=scope)
        axes[1].plot(classes, [row[f"{scope}:memory_ratio"] or float("nan") for row in results], style, label=scope)
    for axis, title in zip(axes, ("time BSCE / CE", "peak memory BSCE / CE")):
        axis.axhline(1.10, color="red", linewidth=0.8, linestyle=":", label="target 1.10")
        axis.set_xscale("log")
        axis.set_xlabel("classes K")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loss_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1_000, 10_000, 50_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--features", type=int, default=2048, help="feature width of the classifier head")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/loss_cost.json", help="results JSON")
    parser.add_argument("--plot", type=Path, default=REPO / "docs/img/loss_cost.png", help="ratio plot (PNG)")
    args = parser.parse_args()

    device = torch.device(args.device)
    results = [
        measure(k, args.batch, args.features, args.repeats, device, args.seed)
        for k in tqdm(args.classes, desc="classes", unit="K")
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "features": args.features,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.plot)
    print(f"device {report['device']}, batch {args.batch}, median of {args.repeats}")
    print("| K | CE ms | BSCE ms | time ratio | CE peak MiB | BSCE peak MiB | head+loss time ratio | head+loss memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['classes']:,} | {row['loss:ce_ms']:.2f} | {row['loss:bsce_ms']:.2f} | {row['loss:time_ratio']:.2f} "
            f"| {row['loss:ce_peak_mib']:.1f} | {row['loss:bsce_peak_mib']:.1f} "
            f"| {row['head+loss:time_ratio']:.2f} | {_ratio(row['head+loss:memory_ratio'])} |"
        )


if __name__ == "__main__":
    main()
