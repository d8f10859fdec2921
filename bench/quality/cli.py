"""``python -m bench.quality``: train and evaluate what is missing, then (or only) write the report."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import bench.quality
from bench import REPO
from bench.quality.plan import LOSSES, SETTINGS, TABLE_ROWS, plan, recipe_of
from bench.quality.run import reevaluate_all, run_all
from training.config import BENCHMARK_VAL_PER_CLASS

# The CPU table's recipe, chosen by measurement on 2 shared cores (docs/results.md, "Recipe and budget").
QUARTER_RESNET10T = ["channels=(16, 32, 64, 128)", "stem_width=16"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=bench.quality.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=REPO / "bench/runs/quality", help="where the run directories go")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (mean ± std)")
    parser.add_argument("--losses", nargs="+", default=list(TABLE_ROWS), choices=LOSSES,
                        help="rows: presets, and presets with +pla (post-hoc logit adjustment); default: %(default)s")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="columns (default: all)")
    parser.add_argument("--shard", default="0/1", help="I/N: run only every N-th missing run from the I-th (parallel invocations)")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs from their last.pt")
    parser.add_argument("--stop-after-minutes", type=float, help="start no new run after this many minutes (the next invocation continues)")
    parser.add_argument("--report", action="store_true", help="write the report after the runs")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the finished runs")
    parser.add_argument("--reevaluate", action="store_true", help="evaluate the finished runs again (e.g. with another --test-per-class), train nothing")
    parser.add_argument("--title", default="CPU", help="the table's name in the report (e.g. GPU for the larger version)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where results.md and img/ go")
    parser.add_argument("--results", type=Path, default=REPO / "bench/results/quality.json", help="all numbers as JSON")
    recipe = parser.add_argument_group("recipe", "shared by every run (see docs/results.md for why)")
    recipe.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: two threads on 2 shared cores were 10x slower)")
    recipe.add_argument("--model", default="resnet10t")
    recipe.add_argument("--model-kwargs", nargs="*", default=QUARTER_RESNET10T, metavar="KEY=VALUE")
    recipe.add_argument("--epochs", type=int, default=20)
    recipe.add_argument("--lr", type=float, default=0.05)
    recipe.add_argument("--patience", type=int, default=2)
    recipe.add_argument("--min-lr", type=float, default=1e-5)
    recipe.add_argument("--batch-size", type=int, default=32)
    recipe.add_argument("--max-per-class", type=int, default=1000, help="n_max of the long tail (0: all that remain after validation)")
    recipe.add_argument("--val-per-class", type=int, default=BENCHMARK_VAL_PER_CLASS, help="clean validation images per class (the benchmark's own default: a 1-point difference must show above sampling error)")
    recipe.add_argument("--test-per-class", type=int, default=0, help="official test images per class (0: all 1,000)")
    recipe.add_argument("--workers", type=int, default=0)
    recipe.add_argument("--input-size", type=int, default=28, help="model input side (the GPU table: 64)")
    recipe.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False, help="random scaled crops and flips (off: memorisation shows within the budget)")
    recipe.add_argument("--train-option", dest="extra", action="append", default=[], help="an extra `productrec train` word (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = args.root.resolve()
    specs = plan(args.seeds, tuple(args.losses), tuple(args.settings))
    index, count = map(int, args.shard.split("/"))
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
    if args.reevaluate:
        reevaluate_all(root, recipe_of(args), specs[index::count])
    elif not args.report_only:
        deadline = None if args.stop_after_minutes is None else time.time() + 60 * args.stop_after_minutes
        run_all(root, recipe_of(args), specs[index::count], args.resume, deadline)
    if args.report or args.report_only:
        from bench.quality.report import write_report

        write_report(root, specs, args)
    return 0
