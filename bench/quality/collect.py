"""The numbers of the report, read from the finished runs: per run, per (setting, loss) cell, and the recipe's choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.quality.plan import BASELINE, EVALUATION_FILE, MAIN, NOISY_40, SETTINGS, TIMING_FILE, Spec, is_finished
from training.memorisation import running_mean
from training.runs import CONFIG_FILE, DATA_FILE, METRICS_FILE, POSTHOC_FILE, TEST_METRICS_FILE

CLEAN_TOLERANCE = 0.01  # the recipe may lose at most one point on clean labels
REQUIRED_GAIN = 0.15  # ... and must beat ce by 15% relative in both 40%-noise settings


def read_run(spec: Spec, root: Path) -> dict[str, Any] | None:
    """Everything the report needs from a finished run, or None if it is not finished."""
    run_dir = spec.run_dir(root)
    if not is_finished(run_dir) or not (run_dir / EVALUATION_FILE).is_file():  # evaluate writes evaluation.json last
        return None
    metrics = json.loads((run_dir / TEST_METRICS_FILE).read_text())
    evaluation = json.loads((run_dir / EVALUATION_FILE).read_text())
    member = next(iter(evaluation["members"].values()))
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    val_errors = [record["val_error"] for record in records]
    best_epoch = int(np.argmin(val_errors))  # the first minimum: the schedule keeps a checkpoint only on a strictly lower error
    zeta = [record.get("susceptibility", float("nan")) for record in records]
    timing_path = run_dir / TIMING_FILE
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    data = json.loads((run_dir / DATA_FILE).read_text())
    posthoc_path = run_dir / POSTHOC_FILE  # class offsets: the tested model's validation error is their cross-fitted one
    posthoc = json.loads(posthoc_path.read_text()) if posthoc_path.is_file() else None
    best_val_error = posthoc["val_error"] if posthoc else val_errors[best_epoch]
    return {
        "setting": spec.setting,
        "loss": spec.loss,
        "seed": spec.seed,
        "run_dir": str(run_dir.relative_to(root)),
        "command": config.get("command", ""),
        "top1_error": metrics["test_top1_error_single_crop"],
        "group_error": {name: 1 - value for name, value in metrics["test_group_accuracy"].items()},
        "memorisation": metrics.get("memorisation"),
        "per_class_error": [None if value is None else 1 - value for value in member["per_class_accuracy"]],
        "class_counts": data["class_counts"],
        "noise_rate_realised": data["noise_rate_realised"],
        "train_images": data["sizes"]["train"],
        "test_images": metrics["test_images"],
        "epochs": len(records),
        "best_epoch": best_epoch + 1,
        "best_val_error": best_val_error,
        "offsets_kept": posthoc["kept"] if posthoc else None,
        "susceptibility_at_best": float(running_mean(zeta[: best_epoch + 1])[-1]),
        "curves": [
            {key: record.get(key) for key in ("epoch", "train_loss", "train_error", "val_error", "susceptibility", "lr", "seconds")}
            for record in records
        ],
        "timing": {**(json.loads(timing_path.read_text()) if timing_path.exists() else {}), "train_s": sum(record["seconds"] for record in records)},
    }


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value)."""
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else None}


def cell_numbers(group: list[dict[str, Any]]) -> dict[str, Any]:
    memorised = [run["memorisation"]["predicts_noisy_label"] for run in group if run["memorisation"] and run["memorisation"]["predicts_noisy_label"] is not None]
    return {
        "seeds": [run["seed"] for run in group],
        "top1_error": summary([run["top1_error"] for run in group]),
        "best_val_error": summary([run["best_val_error"] for run in group]),
        "group_error": {name: summary([run["group_error"][name] for run in group]) for name in group[0]["group_error"]},
        "predicts_noisy_label": summary(memorised) if memorised else None,
        "susceptibility_at_best": summary([run["susceptibility_at_best"] for run in group]),
        "final_train_error": summary([run["curves"][-1]["train_error"] for run in group]),
        "per_class_error": np.nanmean(np.array([run["per_class_error"] for run in group], dtype=float), axis=0).tolist(),
        "class_counts": group[0]["class_counts"],
    }


def bar_against_ce(errors: dict[str, float], ce: dict[str, float]) -> dict[str, Any]:
    """The recipe's bar for one row's errors by setting against ce's: its relative gains in the 40%-noise settings, its
    change on clean labels, and whether the bar is met (every gain >= REQUIRED_GAIN, the change <= CLEAN_TOLERANCE)."""
    gains = {name: 1 - errors[name] / ce[name] for name in NOISY_40}
    clean_change = errors["clean"] - ce["clean"]
    return {
        "relative_gain": gains,
        "clean_change": clean_change,
        "meets_bar": all(gain >= REQUIRED_GAIN for gain in gains.values()) and clean_change <= CLEAN_TOLERANCE,
    }


def choose_recipe(cells: dict[str, dict[str, Any]], rows: Sequence[str]) -> dict[str, Any] | None:
    """The row with the lowest mean best-validation error over the noisy settings, among those that meet the bar on
    validation (at most one point above ce's clean validation error, at least REQUIRED_GAIN below ce's in both 40%-noise
    settings), or, where none does, among those within the clean point alone: a choice by validation only. Then its
    test errors against the bar."""
    noisy = [name for name in SETTINGS if SETTINGS[name].noise_rate > 0]
    complete = [loss for loss in rows if all(cells[name].get(loss) for name in SETTINGS)]
    if BASELINE not in complete:
        return None
    val = {loss: {name: cells[name][loss]["best_val_error"]["mean"] for name in SETTINGS} for loss in complete}
    clean_val = {loss: val[loss]["clean"] for loss in complete}
    within_clean = [loss for loss in complete if clean_val[loss] <= clean_val[BASELINE] + CLEAN_TOLERANCE]
    val_gain = {loss: min(bar_against_ce(val[loss], val[BASELINE])["relative_gain"].values()) for loss in within_clean}
    meeting = [loss for loss in within_clean if val_gain[loss] >= REQUIRED_GAIN]
    eligible = meeting or within_clean
    noisy_val = {loss: float(np.mean([val[loss][name] for name in noisy])) for loss in eligible}
    chosen = min(noisy_val, key=noisy_val.get)
    test = {name: cells[name][chosen]["top1_error"]["mean"] for name in SETTINGS}
    baseline = {name: cells[name][BASELINE]["top1_error"]["mean"] for name in SETTINGS}
    return {
        "loss": chosen,
        "noisy_val_error": noisy_val,
        "meets_bar_on_validation": bool(meeting),
        "validation_gain": val_gain,
        "clean_val_error": clean_val,
        "test_error": test,
        "baseline_test_error": baseline,
        **bar_against_ce(test, baseline),
    }


def collect(root: Path, specs: Sequence[Spec]) -> dict[str, Any]:
    """All numbers of the report: per run, per (setting, loss) cell, and the recipe chosen by validation."""
    runs = {spec.label: read_run(spec, root) for spec in specs}
    rows = tuple(dict.fromkeys(spec.loss for spec in specs))
    finished = {label: run for label, run in runs.items() if run is not None}
    cells: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        cells[setting] = {}
        for loss in rows:
            group = [run for run in finished.values() if run["setting"] == setting and run["loss"] == loss]
            cells[setting][loss] = cell_numbers(group) if group else None
    pairs = [(run["susceptibility_at_best"], run["memorisation"]["predicts_noisy_label"]) for run in finished.values()
             if run["memorisation"] and run["memorisation"]["predicts_noisy_label"] is not None and np.isfinite(run["susceptibility_at_best"])]
    spread = len(pairs) > 2 and all(np.ptp(values) > 0 for values in zip(*pairs))
    correlation = float(np.corrcoef(np.array(pairs).T)[0, 1]) if spread else None
    missing = [label for label, run in runs.items() if run is None]
    first_main = next((spec for spec in specs if spec.setting == MAIN and runs[spec.label] is not None), None)
    return {
        "runs": finished,
        "cells": cells,
        "rows": rows,
        "recipe_choice": choose_recipe(cells, rows),
        "susceptibility_vs_memorisation": {"runs": len(pairs), "pearson": correlation},
        "missing": missing,
        "class_sizes": training_class_sizes(first_main.run_dir(root)) if first_main else None,
    }


def training_class_sizes(run_dir: Path) -> dict[str, list[Any]]:
    """Per class: the true training images n(k) of the long tail, and the images carrying its (noisy) label."""
    from training.config import DataConfig
    from training.data import build_splits

    config = json.loads((run_dir / CONFIG_FILE).read_text())
    train = build_splits(DataConfig(**config["data"])).train
    labels = json.loads((run_dir / DATA_FILE).read_text())["label_names"]
    clean = np.bincount(train.clean_labels, minlength=len(labels))
    noisy = np.bincount(train.labels, minlength=len(labels))
    correct = np.bincount(train.labels[train.labels == train.clean_labels], minlength=len(labels))
    return {"label_names": labels, "clean": clean.tolist(), "noisy": noisy.tolist(), "label_noise": (1 - correct / np.maximum(noisy, 1)).tolist()}


def images_tested_per_run(runs: dict[str, dict[str, Any]]) -> int | None:
    """The test images every run was evaluated on (None: none finished; ValueError: they differ)."""
    counts = {run["test_images"] for run in runs.values()}
    if len(counts) > 1:
        raise ValueError(f"the runs were tested on different numbers of images ({sorted(counts)}): evaluate them again alike")
    return next(iter(counts), None)

