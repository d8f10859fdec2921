"""``python -m bench.quality``: train and evaluate what is missing, then (or only) write the report."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import bench.quality
from bench import REPO
from bench.quality.plan import plan, recipe_of
from bench.quality.report import write_report
from bench.quality.run import run_all


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=bench.quality.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=REPO / "bench/runs/quality", help="where the run directories go")
    parser.add_argument("--main-seeds", type=int, default=3, help="seeds of the main setting (mean ± std)")
    parser.add_argument("--other-seeds", type=int, default=1, help="seeds of the class-dependent-noise and clean settings")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs from their last.pt")
    parser.add_argument("--stop-after-minutes", type=float, help="start no new run after this many minutes (the next invocation continues)")
    parser.add_argument("--report", action="store_true", help="write the report after the runs")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the finished runs")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where results.md and img/ go")
    parser.add_argument("--results", type=Path, default=REPO / "bench/results/quality.json", help="all numbers as JSON")
    recipe = parser.add_argument_group("recipe", "shared by every run (see docs/results.md for why)")
    recipe.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: two threads on 2 shared cores were 10x slower)")
    recipe.add_argument("--epochs", type=int, default=5)
    recipe.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate (the paper: 0.01; raised for few epochs, same for every loss)")
    recipe.add_argument("--patience", type=int, default=1)
    recipe.add_argument("--min-lr", type=float, default=5e-4)
    recipe.add_argument("--batch-size", type=int, default=64)
    recipe.add_argument("--max-per-class", type=int, default=0, help="n_max of the long tail (0: all that remain after validation)")
    recipe.add_argument("--val-per-class", type=int, default=200)
    recipe.add_argument("--test-per-class", type=int, default=300, help="official test images per class (0: all 1,000)")
    recipe.add_argument("--workers", type=int, default=1)
    recipe.add_argument("--train-option", dest="extra", action="append", default=[], help="an extra `productrec train` word (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = args.root.resolve()
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
    specs = plan(args.main_seeds, args.other_seeds)
    if not args.report_only:
        deadline = None if args.stop_after_minutes is None else time.time() + 60 * args.stop_after_minutes
        run_all(root, recipe_of(args), specs, args.resume, deadline)
    if args.report or args.report_only:
        write_report(root, specs, args)
    return 0
