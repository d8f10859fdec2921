"""Evaluation: metric definitions by hand, and PyTorch runs vs the exported repository through one engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main as cli_main
from app.engine.ensemble import Ensemble
from app.contract.manifest import read_repository
from training.evaluate import (
    TTA,
    DataSource,
    TorchMember,
    class_groups,
    evaluate_ensemble,
    load_runs_ensemble,
    memorisation,
    per_class_accuracy,
)


def test_per_class_accuracy_and_thirds_by_training_count() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    predicted = np.array([0, 1, 1, 1, 0, 2, 0, 1])
    accuracy = per_class_accuracy(predicted, labels, n_classes=5)
    assert accuracy[:4].tolist() == pytest.approx([0.5, 2 / 3, 1.0, 0.0]) and np.isnan(accuracy[4])
    groups = class_groups([5, 100, 1, 40, 60, 2, 8])  # most images first, split into 3 near-equal parts
    assert [groups[name].tolist() for name in ("head", "middle", "tail")] == [[1, 4, 3], [6, 0], [5, 2]]


def test_memorisation_counts_only_flipped_labels() -> None:
    clean = np.array([0, 1, 2, 3, 0, 1])
    noisy = np.array([0, 2, 2, 0, 3, 0])  # samples 1, 3, 4, 5 were flipped
    predicted = np.array([0, 2, 1, 3, 3, 2])  # flipped: 2 (noisy), 3 (clean), 3 (noisy), 2 (neither)
    result = memorisation(predicted, noisy, clean)
    assert result == {"noisy_labels": 4, "predicts_noisy_label": 0.5, "predicts_clean_label": 0.25}
    assert memorisation(predicted, clean, clean)["predicts_noisy_label"] is None


@pytest.fixture(scope="module")
def repository_report(trained_repository: Path) -> dict:
    return evaluate_ensemble(Ensemble.load(trained_repository, "cpu"), batch_size=64)


def test_repository_report_has_every_figure(repository_report: dict, fmnist_small_config) -> None:
    report = repository_report
    assert report["test_images"] == 10 * fmnist_small_config().test_per_class
    assert report["tta_sizes"] == [28, 32, 36] and report["strategy"] == "vote"
    assert list(report["members"]) == ["resnet10t", "seresnet18", "resnest14d"]
    for metrics in [*report["members"].values(), report["ensemble"]]:
        assert set(metrics["top1_error"]) == {"28", "32", "36", TTA}
        assert all(0 <= error <= 1 for error in metrics["top1_error"].values())
        assert len(metrics["per_class_accuracy"]) == 10 and set(metrics["group_accuracy"]) == {"head", "middle", "tail"}
        # balanced test set: the class-mean error is the error
        assert metrics["mean_class_error"] == pytest.approx(metrics["top1_error"][TTA])
        memorised = metrics["memorisation"]
        assert memorised["noisy_labels"] > 0
        assert memorised["predicts_noisy_label"] + memorised["predicts_clean_label"] <= 1


def test_pytorch_runs_and_onnx_repository_evaluate_identically(
    repository_report: dict, trained_runs: dict[str, Path], trained_repository: Path
) -> None:
    runs, _ = load_runs_ensemble(list(trained_runs.values()), "cpu")
    # With the exported manifests (their temperatures, which break the vote's ties), as test_export does.
    exported = {member.manifest.name: member.manifest for member in read_repository(trained_repository, verify=False)[1]}
    members = [TorchMember(exported[name], member.model, member.device) for name, member in zip(trained_runs, runs.members)]
    runs_report = evaluate_ensemble(Ensemble(runs.spec, members), batch_size=64)
    for name in trained_runs:
        assert runs_report["members"][name]["top1_error"] == repository_report["members"][name]["top1_error"]
        assert runs_report["members"][name]["memorisation"] == repository_report["members"][name]["memorisation"]
    assert runs_report["ensemble"]["top1_error"] == repository_report["ensemble"]["top1_error"]


def test_evaluate_command_on_a_repository(trained_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    assert cli_main(["evaluate", "--repository", str(trained_repository), "--provider", "cpu", "--out", str(out), "--no-memorisation"]) == 0
    printed = capsys.readouterr().out
    for name in ("resnet10t", "seresnet18", "resnest14d", "ensemble (vote)", "err@28", "err TTA"):
        assert name in printed
    report = json.loads(out.read_text())
    assert report["source"] == {"repository": str(trained_repository)} and "memorisation" not in report["ensemble"]
    assert (tmp_path / "report_per_class.png").stat().st_size > 0


def test_another_share_of_the_test_set_is_evaluated_without_a_data_warning(
    trained_repository: Path, fmnist_small_config, caplog: pytest.LogCaptureFixture
) -> None:
    """``evaluate --test-per-class``: fewer (or all) official test images; the trained data still matches its fingerprint."""
    half = fmnist_small_config().test_per_class // 2
    with caplog.at_level("WARNING", logger="productrec"):
        report = evaluate_ensemble(Ensemble.load(trained_repository, "cpu"), DataSource(test_per_class=half), 64, False)
    assert report["test_images"] == 10 * half and "fingerprint" not in caplog.text


def test_the_strategy_is_chosen_on_validation_and_ties_keep_the_served_one() -> None:
    from training.validation_choice import choose_strategy

    assert choose_strategy({"vote": 0.30, "mean": 0.25}, "vote") == "mean"
    assert choose_strategy({"vote": 0.25, "mean": 0.25}, "vote") == "vote"
    assert choose_strategy({"vote": 0.25, "mean": 0.25}, "mean") == "mean"


def test_choose_strategy_writes_the_validation_choice_into_ensemble_json(
    repository_report: dict, trained_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from app.contract.manifest import read_ensemble_spec
    from app.contract.ranking import STRATEGIES

    choice = repository_report["validation_strategy"]
    assert set(choice["errors"]) == set(STRATEGIES) and choice["served"] == "vote" and choice["images"] > 0
    assert choice["errors"][choice["best"]] == min(choice["errors"].values())
    repository = tmp_path / "models"
    shutil.copytree(trained_repository, repository)
    assert cli_main(["evaluate", "--repository", str(repository), "--choose-strategy", "--no-memorisation", "--batch-size", "64"]) == 0
    assert read_ensemble_spec(repository).strategy == choice["best"]  # the same validation split, the same choice
    assert f"strategy: {choice['best']}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # run directories have no ensemble.json to write
        cli_main(["evaluate", str(repository), "--choose-strategy"])
    assert refused.value.code == 2 and "give --repository" in capsys.readouterr().err
