"""The numbers of the report, read from the finished runs: per run, per cell, and the ensemble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.quality.plan import (
    ENSEMBLE_DIR,
    EVALUATION_FILE,
    FAMILIES,
    LOSSES,
    MAIN,
    SETTINGS,
    TIMING_FILE,
    Spec,
    ensemble_members,
    is_finished,
)
from training.runs import CONFIG_FILE, DATA_FILE, METRICS_FILE, TEST_METRICS_FILE


def read_run(spec: Spec, root: Path) -> dict[str, Any] | None:
    """Everything the report needs from a finished run, or None if it is not finished."""
    run_dir = spec.run_dir(root)
    if not is_finished(run_dir):
        return None
    metrics = json.loads((run_dir / TEST_METRICS_FILE).read_text())
    evaluation = json.loads((run_dir / EVALUATION_FILE).read_text())
    member = next(iter(evaluation["members"].values()))
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    timing_path = run_dir / TIMING_FILE
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    data = json.loads((run_dir / DATA_FILE).read_text())
    return {
        "setting": spec.setting,
        "loss": spec.loss,
        "seed": spec.seed,
        "family": spec.family.name,
        "run_dir": str(run_dir.relative_to(root)),
        "command": config.get("command", ""),
        "top1_error": metrics["test_top1_error_single_crop"],
        "top1_error_tta": metrics["test_top1_error"],
        "top1_error_by_size": metrics["test_top1_error_by_size"],
        "group_error": {name: 1 - value for name, value in metrics["test_group_accuracy"].items()},
        "memorisation": metrics.get("memorisation"),
        "per_class_error": [None if value is None else 1 - value for value in member["per_class_accuracy"]],
        "class_counts": data["class_counts"],
        "noise_rate_realised": data["noise_rate_realised"],
        "train_images": data["sizes"]["train"],
        "test_images": metrics["test_images"],
        "epochs": len(records),
        "best_val_error": min(record["val_error"] for record in records),
        "curves": [{key: record[key] for key in ("epoch", "train_loss", "train_error", "val_error", "lr", "seconds")} for record in records],
        # Training time as the sum of the epochs' times: it survives interruptions (the wall clock of a resumed run does not).
        "timing": {**(json.loads(timing_path.read_text()) if timing_path.exists() else {}), "train_s": sum(record["seconds"] for record in records)},
    }


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value)."""
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else None}


def collect(root: Path, specs: Sequence[Spec]) -> dict[str, Any]:
    """All numbers of the report: per run, per (setting, loss) cell, TTA and ensemble tables."""
    runs = {spec.label: read_run(spec, root) for spec in specs}
    finished = {label: run for label, run in runs.items() if run is not None}
    cells: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        cells[setting] = {}
        for loss in LOSSES:
            group = [run for run in finished.values() if run["setting"] == setting and run["loss"] == loss and run["family"] == FAMILIES[0].name]
            if not group:
                cells[setting][loss] = None
                continue
            memorised = [run["memorisation"] for run in group if run["memorisation"] and run["memorisation"]["predicts_noisy_label"] is not None]
            cells[setting][loss] = {
                "seeds": [run["seed"] for run in group],
                "top1_error": summary([run["top1_error"] for run in group]),
                "top1_error_tta": summary([run["top1_error_tta"] for run in group]),
                "group_error": {name: summary([run["group_error"][name] for run in group]) for name in group[0]["group_error"]},
                "predicts_noisy_label": summary([m["predicts_noisy_label"] for m in memorised]) if memorised else None,
                "predicts_clean_label": summary([m["predicts_clean_label"] for m in memorised]) if memorised else None,
                "top1_error_by_size": {size: summary([run["top1_error_by_size"][size] for run in group]) for size in group[0]["top1_error_by_size"]},
                "per_class_error": np.nanmean(np.array([run["per_class_error"] for run in group], dtype=float), axis=0).tolist(),
                "class_counts": group[0]["class_counts"],
            }
    main_cells = {loss: cell for loss, cell in cells[MAIN].items() if cell}
    best_loss = min(main_cells, key=lambda loss: main_cells[loss]["top1_error"]["mean"]) if main_cells else None
    ensemble_path = root / ENSEMBLE_DIR / EVALUATION_FILE
    ensemble = None
    if ensemble_path.exists() and all(is_finished(member) for member in ensemble_members(root)):
        report = json.loads(ensemble_path.read_text())
        names = list(report["members"])
        rows = {f"{family.name} ({family.model})": report["members"][name] for family, name in zip(FAMILIES, names)}
        rows["top-1 vote of the 3"] = report["ensemble"]
        ensemble = {
            name: {
                "top1_error_by_setting": metrics["top1_error"],
                "group_error": {group: 1 - value for group, value in metrics["group_accuracy"].items()},
                "memorisation": metrics.get("memorisation"),
            }
            for name, metrics in rows.items()
        }
    missing = [label for label, run in runs.items() if run is None]
    first_main = next((spec for spec in specs if spec.setting == MAIN and runs[spec.label] is not None), None)
    class_sizes = training_class_sizes(first_main.run_dir(root)) if first_main else None
    return {"runs": finished, "cells": cells, "best_loss": best_loss, "ensemble": ensemble, "missing": missing, "class_sizes": class_sizes}


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
    return {
        "label_names": labels,
        "clean": clean.tolist(),
        "noisy": noisy.tolist(),
        "label_noise": (1 - correct / np.maximum(noisy, 1)).tolist(),
    }
