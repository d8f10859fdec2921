"""``python -m bench.serving``: options, then measure every case (or only report) and write the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import bench.serving
from bench import REPO
from bench.serving.cases import CASES, TARGET_CONCURRENCY, TARGET_RATIO
from bench.serving.plot import plot
from bench.serving.report import markdown, write_doc
from bench.serving.results import is_target
from bench.serving.run import run_case


def _git_commit() -> str:
    try:
        def git(*arguments: str) -> str:
            return subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True).stdout

        dirty = " + uncommitted changes in app/" if git("status", "--porcelain", "app").strip() else ""
        return git("rev-parse", "--short", "HEAD").strip() + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _loadavg() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving", description=bench.serving.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to measure")
    what.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="ensembles to measure")
    what.add_argument(
        "--concurrency", nargs="+", type=int, help="client concurrencies (default per case: 1 8 32 / 1 8)"
    )
    what.add_argument("--requests", type=int, help="measured requests per point (default per case and concurrency)")
    what.add_argument("--photos", type=int, default=256, help="distinct Fashion-MNIST test images posted (small case)")
    what.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE",
        help="a service setting (app/core/config.py) for the service and the limit alike, e.g. intra_op_threads=1",
    )
    what.add_argument("--no-profile", action="store_true", help="skip py-spy (thread roles then coarse)")
    what.add_argument("--profile-cases", nargs="*", default=["small"], help="cases profiled with py-spy")
    what.add_argument("--ranking-all", action="store_true", help="time ranking for every case, not only realistic")
    what.add_argument(
        "--report-only", action="store_true", help="measure nothing: write the plot and the doc from --out's JSON"
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    paths.add_argument(
        "--cache", type=Path, default=REPO / ".cache" / "serving-bench", help="model repositories, profiles"
    )
    paths.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    paths.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "serving-benchmark.png")
    paths.add_argument("--doc", type=Path, default=REPO / "docs" / "serving-benchmark.md", help="'-': do not write")
    args = parser.parse_args(argv)
    for setting in args.setting:
        if "=" not in setting:
            parser.error(f"--setting {setting!r}: expected NAME=VALUE")
    return args


def _report(results: dict, args: argparse.Namespace) -> None:
    """The plot, and the doc unless ``--doc -``."""
    plot(results, args.plot)
    if str(args.doc) != "-":
        write_doc(args.doc, markdown(results, args.plot, args.doc))


def measure(args: argparse.Namespace, argv: Sequence[str], overrides: dict[str, str]) -> dict:
    """Every case of ``args.cases``, with what was run, where and when."""
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "-m", "bench.serving", *argv]),
        "commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_start": _loadavg(),
        },
        "setting_overrides": overrides,
        "target": {"ratio": TARGET_RATIO, "concurrency": TARGET_CONCURRENCY, "batching": "on"},
        "cases": [],
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        for name in args.cases:
            results["cases"].append(run_case(CASES[name], args, overrides, Path(scratch)))
    results["machine"]["loadavg_end"] = _loadavg()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(setting.split("=", 1) for setting in args.setting)
    if "repository" in overrides:
        raise SystemExit("--setting repository=...: each case has its own repository (see --cache)")
    if args.report_only:
        _report(json.loads(args.out.read_text()), args)
        print(f"wrote {args.plot}" + ("" if str(args.doc) == "-" else f", {args.doc}") + f" from {args.out}")
        return 0
    results = measure(args, argv if argv is not None else sys.argv[1:], overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _report(results, args)
    print(f"wrote {args.out}, {args.plot}" + ("" if str(args.doc) == "-" else f", {args.doc}"))
    for case in results["cases"]:
        for point in filter(is_target, case["points"]):
            verdict = "meets" if point["ratio"] >= TARGET_RATIO else "MISSES"
            print(f"{case['case']}: ratio {point['ratio']:.2f} at the target point {verdict} the target {TARGET_RATIO}")
    return 0
