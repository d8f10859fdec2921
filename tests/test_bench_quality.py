"""The quality benchmark's plan and report generator on a fake directory of finished runs (the benchmark itself is not a test)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from bench.quality.cli import parse_args
from bench.quality.collect import choose_recipe, images_tested_per_run
from bench.quality.plan import LOSSES, POSTHOC, SETTINGS, TABLE_ROWS, plan, recipe_of
from bench.quality.report import markers, write_report
from training.loss_registry import LOSS_PRESETS


def fake_run(run_dir: Path, error: float, val_error: float, noisy: bool, data: dict) -> None:
    """The files `productrec train` + `productrec evaluate` leave in a finished run directory."""
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(f"weights {error}".encode())
    counts = [300, 180, 108, 65, 39, 23, 14, 8, 5, 3]
    accuracy = [1 - error * (1 + index / 10) for index in range(len(counts))]
    groups = {"head": sum(accuracy[:4]) / 4, "middle": sum(accuracy[4:7]) / 3, "tail": sum(accuracy[7:]) / 3}
    memorisation = {"noisy_labels": 100, "predicts_noisy_label": error / 2, "predicts_clean_label": 1 - error} if noisy else {
        "noisy_labels": 0, "predicts_noisy_label": None, "predicts_clean_label": None}
    (run_dir / "test_metrics.json").write_text(json.dumps({
        "checkpoint_sha256": hashlib.sha256((run_dir / "best.pt").read_bytes()).hexdigest(),
        "test_images": 1000, "test_top1_error": error, "test_top1_error_single_crop": error,
        "test_group_accuracy": groups, "memorisation": memorisation,
    }))
    (run_dir / "evaluation.json").write_text(json.dumps({"members": {"resnet10t": {"per_class_accuracy": accuracy}}}))
    curve = [(1, val_error + 0.1, 0.2), (2, val_error, 0.3), (3, val_error + 0.05, 0.5)]
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "train_loss": 1.0, "train_error": 0.6 - epoch / 10, "val_error": val, "susceptibility": zeta,
                    "lr": 0.05, "seconds": 10.0}) + "\n" for epoch, val, zeta in curve))
    (run_dir / "config.json").write_text(json.dumps({"data": data, "command": f"productrec train --output {run_dir}"}))
    (run_dir / "data.json").write_text(json.dumps({"label_names": [f"class {k}" for k in range(10)], "class_counts": counts,
                                                   "noise_rate_realised": 0.4 if noisy else 0.0, "sizes": {"train": 745}}))
    (run_dir / "bench_timing.json").write_text(json.dumps({"train_s": 100.0, "evaluate_s": 20.0}))


def test_plan_covers_every_preset_and_setting_seed_by_seed() -> None:
    specs = plan(3)
    assert set(LOSS_PRESETS) < set(LOSSES) and len(specs) == len(LOSSES) * len(SETTINGS) * 3
    assert {spec.seed for spec in specs[: len(LOSSES) * len(SETTINGS)]} == {0}
    words = recipe_of(parse_args([])).train_words(specs[0], Path("out"))
    assert words[words.index("--loss") + 1] == "ce" and "--no-hflip" in words and words[-2:] == ["--output", "out"]
    assert "--posthoc-adjust" not in words
    posthoc = next(spec for spec in specs if spec.loss == "bsce-la" + POSTHOC)
    words = recipe_of(parse_args([])).train_words(posthoc, Path("out"))
    assert words[words.index("--loss") + 1] == "bsce-la" and "--posthoc-adjust" in words
    assert parse_args([]).losses == list(TABLE_ROWS) and set(TABLE_ROWS) <= set(LOSSES)
    asym = next(spec for spec in specs if spec.setting == "asym40")
    words = recipe_of(parse_args(["--augment"])).train_words(asym, Path("out"))
    assert words[words.index("--noise-type") + 1] == "asymmetric" and "--no-hflip" not in words


def test_recipe_is_chosen_by_validation_not_by_test_error() -> None:
    def cell(test: float, val: float) -> dict:
        return {"top1_error": {"mean": test}, "best_val_error": {"mean": val}}

    cells = {name: {loss: None for loss in LOSSES} for name in SETTINGS}
    for name in SETTINGS:
        cells[name]["ce"] = cell(0.40, 0.40)
        cells[name]["la"] = cell(0.20, 0.35)  # best on test, second on validation
        cells[name]["sce"] = cell(0.30, 0.30)  # best on validation
        cells[name]["vs"] = cell(0.10, 0.10)
    cells["clean"]["vs"] = cell(0.10, 0.45)  # best everywhere, but more than a point worse than ce on clean validation
    choice = choose_recipe(cells, LOSSES)
    assert choice["loss"] == "sce"
    assert choice["relative_gain"]["sym40"] == pytest.approx(0.25) and choice["meets_bar"]


def test_recipe_must_meet_the_bar_on_validation_where_a_row_does() -> None:
    def cell(val: float) -> dict:
        return {"top1_error": {"mean": val}, "best_val_error": {"mean": val}}

    cells = {name: {loss: None for loss in LOSSES} for name in SETTINGS}
    for name in SETTINGS:
        cells[name]["ce"] = cell(0.40 if name != "clean" else 0.20)
        cells[name]["la"] = cell(0.20 if name != "asym40" else 0.36)  # lowest noisy mean, 10% below ce on asym40 only
        cells[name]["sce"] = cell(0.33 if name != "clean" else 0.20)  # 17.5% below ce in both 40% settings
    cells["clean"]["la"] = cell(0.20)
    choice = choose_recipe(cells, LOSSES)
    assert choice["loss"] == "sce" and choice["meets_bar_on_validation"]
    assert choice["validation_gain"]["la"] == pytest.approx(0.10)
    for name in SETTINGS:
        cells[name]["sce"] = None  # no row meets the bar on validation: the clean point alone decides
    choice = choose_recipe(cells, LOSSES)
    assert choice["loss"] == "la" and not choice["meets_bar_on_validation"]


def test_report_tables_plots_and_missing_cells_keep_the_rest_of_results_md(tmp_path: Path, fmnist_dir: Path) -> None:
    from training.config import DataConfig

    root = tmp_path / "runs"
    data = dataclasses.asdict(DataConfig(fmnist_dir=str(fmnist_dir), val_per_class=30, max_per_class=300))
    for loss, error in {"ce": 0.40, "la": 0.30}.items():
        for seed in range(3 if loss != "ce" else 2):  # ce seed 2 never finished
            for name in SETTINGS:
                fake_run(root / name / loss / f"seed{seed}", error + seed / 100, error, name != "clean", data)
    (root / "asym40" / "sce" / "seed0").mkdir(parents=True)  # started, not finished: no best.pt
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# Calibration and average-k\n\nkept as it is\n")

    args = parse_args(["--report-only", "--root", str(root), "--docs", str(docs), "--results", str(tmp_path / "quality.json"), "--seeds", "3"])
    numbers = write_report(root, plan(3, LOSSES), args)

    assert numbers["cells"]["sym40"]["la"]["top1_error"]["mean"] == pytest.approx(0.31)
    assert numbers["cells"]["sym40"]["la"]["top1_error"]["std"] == pytest.approx(0.01)
    assert numbers["cells"]["sym40"]["ce"]["top1_error"]["n"] == 2 and numbers["cells"]["asym40"]["sce"] is None
    assert "sym40/ce/seed2" in numbers["missing"] and "asym40/sce/seed0" in numbers["missing"]
    assert numbers["recipe_choice"]["loss"] == "la"
    assert numbers["susceptibility_vs_memorisation"] == {"runs": 3 * (2 + 3), "pearson": None}  # ζ constant: no correlation
    text = (docs / "results.md").read_text()
    assert "| la | **0.3100 ± 0.0100** |" in text and "| ce | 0.4050 ± 0.0071 (n=2) |" in text
    assert "`sym40/ce/seed2`" in text and "productrec train --loss la" in text and "It **meets** the bar" in text
    assert "1,000 official test images per run" in text and "1,000 test images per run, so one image is 0.1 point" in text
    assert text.endswith("# Calibration and average-k\n\nkept as it is\n") and text.count(markers("CPU")[0]) == 1
    write_report(root, plan(3), args)  # a second report replaces its own section only
    assert (docs / "results.md").read_text() == text
    for image in ("quality_cpu_per_class_error.png", "quality_cpu_training_curves.png", "quality_cpu_susceptibility.png"):
        assert (docs / "img" / image).read_bytes()[:4] == b"\x89PNG"


def test_runs_tested_on_different_shares_of_the_test_set_are_not_compared() -> None:
    runs = {"a": {"test_images": 1000}, "b": {"test_images": 10000}}
    with pytest.raises(ValueError, match="evaluate them again alike"):
        images_tested_per_run(runs)
    assert images_tested_per_run({"a": {"test_images": 1000}}) == 1000 and images_tested_per_run({}) is None


def test_an_offsets_row_resumes_a_copy_of_the_run_it_is_fitted_on_with_its_options(tmp_path: Path) -> None:
    from bench.quality.plan import OFFSETS, Spec, row_words
    from bench.quality.run import offsets_words

    assert row_words("bsce+pla" + OFFSETS) == ["--loss", "bsce", "--posthoc-adjust", "--posthoc-offsets"]
    assert row_words("la" + OFFSETS) == ["--loss", "la", "--posthoc-offsets"] and {"la" + OFFSETS, "bsce+pla" + OFFSETS} <= set(TABLE_ROWS)
    root = tmp_path / "runs"
    spec, base = Spec("sym40", "bsce+pla" + OFFSETS, 0), Spec("sym40", "bsce+pla", 0)
    assert offsets_words(spec, root) is None  # the base run is not finished: the row trains as the recipe says
    assert offsets_words(base, root) is None  # not an offsets row
    fake_run(base.run_dir(root), 0.3, 0.3, True, {})
    command = f"productrec train --loss bsce --posthoc-adjust --test-per-class 100 --output {base.run_dir(root)} --workers 0"
    (base.run_dir(root) / "config.json").write_text(json.dumps({"data": {}, "command": command}))
    run_dir = spec.run_dir(root)
    expected = ["--loss", "bsce", "--posthoc-adjust", "--test-per-class", "100", "--workers", "0", "--posthoc-offsets", "--output", str(run_dir), "--resume"]
    assert offsets_words(spec, root) == expected  # the base run's own options: its data, whatever the recipe says now
    assert (run_dir / "best.pt").read_bytes() == (base.run_dir(root) / "best.pt").read_bytes()
    assert not (run_dir / "test_metrics.json").exists()  # it is evaluated again once its offsets are fitted
    assert offsets_words(spec, root) == expected  # an interrupted fit resumes the same way
