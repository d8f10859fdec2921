"""Training and evaluating the table's runs through ``productrec train`` and ``productrec evaluate``, resumably."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Sequence

from bench.quality.plan import TIMING_FILE, Recipe, Spec, is_finished
from training.runs import LAST_CHECKPOINT

log = logging.getLogger("productrec.bench.quality")


def run_productrec(subcommand: str, words: Sequence[str]) -> None:
    """``productrec <subcommand> <words>`` in this process (the CLI's own parser, logging and error handling)."""
    from app.cli import main

    log.info("productrec %s %s", subcommand, shlex.join(words))
    if main([subcommand, *words]) != 0:
        raise RuntimeError(f"productrec {subcommand} failed")


def train_and_evaluate(spec: Spec, root: Path, recipe: Recipe, resume: bool) -> dict[str, float]:
    """Train (or resume) one run, then evaluate it; returns the wall times, also kept in the run directory."""
    run_dir = spec.run_dir(root)
    words = recipe.train_words(spec, run_dir)
    if (run_dir / LAST_CHECKPOINT).exists():
        if not resume:
            raise SystemExit(f"{run_dir} holds an interrupted run: pass --resume to continue it (or delete the directory)")
        words.append("--resume")
    timing_path = run_dir / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    started = time.perf_counter()
    run_productrec("train", words)
    timing["train_s"] = timing.get("train_s", 0.0) + time.perf_counter() - started
    evaluate(run_dir, recipe, timing)
    return timing


def evaluate(run_dir: Path, recipe: Recipe, timing: dict[str, float] | None = None) -> None:
    """``productrec evaluate`` on the recipe's share of the test set; its wall time goes into the run's timing."""
    timing_path = run_dir / TIMING_FILE
    if timing is None:
        timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    started = time.perf_counter()
    run_productrec("evaluate", [str(run_dir), "--test-per-class", str(recipe.test_per_class or 0)])
    timing["evaluate_s"] = time.perf_counter() - started
    timing_path.write_text(json.dumps(timing, indent=2) + "\n")


def reevaluate_all(root: Path, recipe: Recipe, specs: Sequence[Spec]) -> None:
    """Evaluate every finished run again (another share of the test set, a changed evaluation), training nothing."""
    from tqdm import tqdm

    finished = [spec for spec in specs if is_finished(spec.run_dir(root))]
    for spec in tqdm(finished, desc="evaluating again", unit="run", dynamic_ncols=True):
        evaluate(spec.run_dir(root), recipe)


def run_all(root: Path, recipe: Recipe, specs: Sequence[Spec], resume: bool, deadline: float | None) -> None:
    from tqdm import tqdm

    progress = tqdm(specs, desc="quality runs", unit="run", dynamic_ncols=True)
    for spec in progress:
        progress.set_postfix_str(spec.label)
        if is_finished(spec.run_dir(root)):
            continue
        if deadline is not None and time.time() > deadline:
            log.warning("deadline reached: %s and later runs left for the next invocation", spec.label)
            break
        timing = train_and_evaluate(spec, root, recipe, resume)
        log.info("%s: train %.0fs, evaluate %.0fs", spec.label, timing["train_s"], timing["evaluate_s"])
