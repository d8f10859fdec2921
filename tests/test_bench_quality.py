"""The quality benchmark's report generator on a fake directory of finished runs (the benchmark itself is not a test)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from bench.quality.cli import parse_args
from bench.quality.plan import plan
from bench.quality.report import write_report


def fake_run(run_dir: Path, error: float, noisy: bool, data: dict) -> None:
    """The files `productrec train` + `productrec evaluate` leave in a finished run directory."""
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(f"weights {error}".encode())
    counts = [5000, 3000, 2000, 1200, 800, 500, 300, 200, 120, 50]
    accuracy = [1 - error * (1 + index / 10) for index in range(len(counts))]
    groups = {"head": sum(accuracy[:4]) / 4, "middle": sum(accuracy[4:7]) / 3, "tail": sum(accuracy[7:]) / 3}
    memorisation = {"noisy_labels": 100, "predicts_noisy_label": error / 2, "predicts_clean_label": 1 - error} if noisy else {
        "noisy_labels": 0, "predicts_noisy_label": None, "predicts_clean_label": None}
    (run_dir / "test_metrics.json").write_text(json.dumps({
        "checkpoint_sha256": hashlib.sha256((run_dir / "best.pt").read_bytes()).hexdigest(),
        "test_images": 600,
        "test_top1_error": error - 0.01,
        "test_top1_error_single_crop": error,
        "test_top1_error_by_size": {"28": error, "32": error + 0.02, "36": error + 0.05},
        "test_mean_class_error": error,
        "test_group_accuracy": groups,
        "memorisation": memorisation,
    }))
    (run_dir / "evaluation.json").write_text(json.dumps({"members": {"resnet18": {"per_class_accuracy": accuracy}}}))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "train_loss": 2 - epoch / 4, "train_error": 0.6 - epoch / 20, "val_error": error + 0.1 / epoch,
                    "lr": 0.05, "seconds": 20.0}) + "\n" for epoch in (1, 2, 3)))
    (run_dir / "config.json").write_text(json.dumps({"data": data, "command": f"productrec train --output {run_dir}"}))
    (run_dir / "data.json").write_text(json.dumps({"label_names": [f"class {k}" for k in range(10)], "class_counts": counts, "noise_rate_realised": 0.4 if noisy else 0.0, "sizes": {"train": 8270}}))
    (run_dir / "bench_timing.json").write_text(json.dumps({"train_s": 100.0, "evaluate_s": 20.0}))


def test_report_tables_plots_and_missing_cells_from_finished_runs(tmp_path: Path, fmnist_dir: Path) -> None:
    from training.config import DataConfig

    root = tmp_path / "runs"
    data = dataclasses.asdict(DataConfig(fmnist_dir=str(fmnist_dir), val_per_class=200))
    errors = {"ce": 0.30, "bce": 0.28, "sce": 0.26, "bsce": 0.22}
    for loss, error in errors.items():
        for seed in range(3 if loss != "ce" else 2):  # ce seed 2 never finished
            fake_run(root / "sym40" / loss / f"seed{seed}", error + seed / 100, noisy=True, data=data)
    fake_run(root / "clean" / "bsce" / "seed0", 0.15, noisy=False, data=data)
    (root / "asym40" / "ce" / "seed0").mkdir(parents=True)  # started, not finished: no best.pt

    args = parse_args(["--report-only", "--root", str(root), "--docs", str(tmp_path / "docs"), "--results", str(tmp_path / "quality.json")])
    numbers = write_report(root, plan(3, 1), args)

    assert numbers["best_loss"] == "bsce"
    bsce = numbers["cells"]["sym40"]["bsce"]
    assert bsce["top1_error"]["mean"] == pytest.approx(0.23)
    assert bsce["top1_error"]["std"] == pytest.approx(0.01)
    assert numbers["cells"]["sym40"]["ce"]["top1_error"]["n"] == 2
    assert numbers["cells"]["asym40"]["ce"] is None
    assert "sym40/ce/seed2" in numbers["missing"] and "asym40/ce/seed0" in numbers["missing"]
    assert numbers["ensemble"] is None
    sizes = numbers["class_sizes"]  # rebuilt from the runs' data config: the true long tail and the noisy labels
    assert sizes["clean"][0] == 5800 and sizes["clean"][-1] == 58 and sum(sizes["noisy"]) == sum(sizes["clean"])
    assert sizes["label_noise"][-1] > 0.5  # symmetric noise swamps the tail class

    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| bsce | 0.2300 ± 0.0100 | missing | 0.1500 (n=1) | 0.1407 |" in text
    assert "| resize 36, centre crop | 0.2800 ± 0.0100 |" in text
    assert "`sym40/ce/seed2`" in text and "python -m bench.quality --resume --report" in text
    assert "Table 4" in text and "have not all finished" in text
    for image in ("quality_per_class_error.png", "quality_training_curves.png"):
        assert (tmp_path / "docs" / "img" / image).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "quality.json").read_text())["cells"]["clean"]["bsce"]["top1_error"]["mean"] == pytest.approx(0.15)
