"""Training and evaluating the table's runs through ``productrec train`` and ``productrec evaluate``, resumably."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Sequence

from bench.quality.plan import TIMING_FILE, Recipe, Spec, is_finished, without_offsets
from training.runs import BEST_CHECKPOINT, CONFIG_FILE, DATA_FILE, LAST_CHECKPOINT, METRICS_FILE

log = logging.getLogger("productrec.bench.quality")


def run_productrec(subcommand: str, words: Sequence[str]) -> None:
    """``productrec <subcommand> <words>`` in this process (the CLI's own parser, logging and error handling)."""
    from app.cli import main

    log.info("productrec %s %s", subcommand, shlex.join(words))
    if main([subcommand, *words]) != 0:
        raise RuntimeError(f"productrec {subcommand} failed")


# What an offsets row takes over from the run it is fitted on: --posthoc-offsets acts only after the last epoch, so
# training with it from scratch repeats that run's epochs exactly (same seed, same data); resuming a copy skips them.
_TRAINED_FILES = (BEST_CHECKPOINT, LAST_CHECKPOINT, CONFIG_FILE, DATA_FILE, METRICS_FILE, TIMING_FILE)


def offsets_words(spec: Spec, root: Path) -> list[str] | None:
    """For an offsets row: the ``productrec train`` words that resume its run with --posthoc-offsets, with that run's
    own options (so its data); when not started, the finished run it is fitted on is copied in first. None: train as
    the recipe says (a row without offsets, or one whose base run is not finished)."""
    run_dir = spec.run_dir(root)
    base = Spec(spec.setting, without_offsets(spec.loss), spec.seed).run_dir(root)
    if base == run_dir:
        return None
    if not (run_dir / CONFIG_FILE).is_file():
        if not is_finished(base):
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in _TRAINED_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, run_dir / name)
    words = shlex.split(json.loads((run_dir / CONFIG_FILE).read_text())["command"])[2:]  # after "productrec train"
    at = words.index("--output")
    words = [word for word in [*words[:at], *words[at + 2 :]] if word not in ("--posthoc-offsets", "--resume")]
    return [*words, "--posthoc-offsets", "--output", str(run_dir), "--resume"]


def train_and_evaluate(spec: Spec, root: Path, recipe: Recipe, resume: bool) -> dict[str, float]:
    """Train (or resume) one run, then evaluate it; returns the wall times, also kept in the run directory."""
    run_dir = spec.run_dir(root)
    words = offsets_words(spec, root) or recipe.train_words(spec, run_dir)
    if (run_dir / LAST_CHECKPOINT).exists() and "--resume" not in words:
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
