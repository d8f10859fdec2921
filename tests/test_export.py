"""Export: train -> evaluate -> export -> ONNX parity, the manifest contract, versions and the ensemble file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.cli import main as cli_main
from app.engine.ensemble import Ensemble
from app.contract.manifest import ENSEMBLE_FILE, INPUT_NAME, OUTPUT_NAME, read_repository, load_manifest, member_dir, sha256_file
from app.contract.preprocess import tta_crops
from training.config import ConfigError, DataConfig
from training.data import build_splits
from training.evaluate import TorchMember, load_runs_ensemble
from training.export import ExportParityError, MAX_LOGIT_DIFF, export_run, export_to_repository, run_manifest
from training.runs import TEST_METRICS_FILE, load_run
from training.train import train


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory, image_folder_factory, train_config) -> Path:
    root = tmp_path_factory.mktemp("folder")
    images = image_folder_factory(root / "images")
    data = DataConfig(dataset=str(images), val_per_class=4, test_dataset=str(image_folder_factory(root / "test", per_class=4, seed=1)))
    config = train_config(data, root / "run", model="test_resnet", input_size=16, tta_sizes=(16, 18, 20), batch_size=8, loss="sce")
    return train(config)


def test_train_evaluate_export_on_generated_images(folder_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["evaluate", str(folder_run), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "err TTA" in table and folder_run.name in table
    test_metrics = json.loads((folder_run / TEST_METRICS_FILE).read_text())
    assert test_metrics["test_images"] == 12 and 0 <= test_metrics["test_top1_error"] <= 1
    assert (folder_run / "evaluation_per_class.png").is_file()

    repository = tmp_path / "models"
    assert cli_main(["export", str(folder_run), "--repository", str(repository), "--name", "stripes", "--ensemble-member"]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    directory = member_dir(repository, "stripes", "1")
    manifest = load_manifest(directory)
    preprocess = manifest.preprocess
    assert manifest.architecture == "test_resnet" and preprocess.in_chans == 3 and preprocess.input_size == 16
    assert set(preprocess.tta_sizes) <= {16, 18, 20} and manifest.labels == ["checker", "horizontal", "vertical"]
    validation = manifest.metrics["validation"]
    assert list(preprocess.tta_sizes) == validation["tta_sizes"] and len(validation["tta_sets"]) == 7  # chosen on validation
    assert validation["tta_sets"]["/".join(map(str, sorted(preprocess.tta_sizes)))] == min(validation["tta_sets"].values())
    assert manifest.calibration is not None and manifest.calibration.temperature > 0
    assert manifest.loss.name == "sce" and manifest.loss.params["alpha"] == 0.4 and manifest.loss.params["beta"] == 0.7
    assert manifest.training_command.startswith("productrec train --dataset ")
    run = load_run(folder_run)
    assert manifest.class_counts == run.data["class_counts"] and manifest.data_fingerprint == run.data["fingerprint"]
    assert preprocess.mean == tuple(run.config.model.mean) and len(preprocess.std) == 3
    assert manifest.metrics["test_top1_error"] == test_metrics["test_top1_error"]  # evaluated before export
    assert 0 <= manifest.metrics["onnx_max_abs_logit_diff"] <= MAX_LOGIT_DIFF
    assert manifest.sha256 == sha256_file(directory / manifest.model_file) and manifest.opset >= 17
    assert manifest.train_config["model"]["model"] == "test_resnet"

    graph = onnx.load(str(directory / manifest.model_file))
    assert [node.name for node in graph.graph.input] == [INPUT_NAME] and [node.name for node in graph.graph.output] == [OUTPUT_NAME]
    session = ort.InferenceSession(str(directory / manifest.model_file), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # dynamic batch axis
        (logits,) = session.run(None, {INPUT_NAME: np.zeros((batch, 3, 16, 16), np.float32)})
        assert logits.shape == (batch, 3)

    # The exported ensemble gives the PyTorch run's probabilities on real test images, through the same engine.
    splits = build_splits(run.config.data)
    images = [splits.test.load(index) for index in range(len(splits.test))]
    onnx_probs, _ = Ensemble.load(repository, "cpu").predict(images, tta=True)
    runs_ensemble, _ = load_runs_ensemble([folder_run], "cpu")
    (member,) = runs_ensemble.members  # with the exported manifest: its calibration and the TTA sizes chosen on validation
    torch_ensemble = Ensemble(runs_ensemble.spec, [TorchMember(manifest, member.model, member.device)])
    torch_probs, _ = torch_ensemble.predict(images, tta=True)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    assert json.loads((repository / ENSEMBLE_FILE).read_text())["members"] == [{"name": "stripes", "version": "1"}]


def test_versions_are_never_overwritten_and_the_ensemble_keeps_one_entry_per_name(folder_run: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    assert export_run(folder_run, repository, name="stripes", ensemble=True, check_images=2).version == "1"
    with pytest.raises(ConfigError, match="already exists"):
        export_run(folder_run, repository, name="stripes", version="1", check_images=2)
    assert export_run(folder_run, repository, name="stripes", ensemble=True, check_images=2).version == "2"
    assert export_run(folder_run, repository, name="stripes-b", ensemble=True, check_images=2).version == "1"
    spec, members = read_repository(repository)
    assert [(m.name, m.version) for m in spec.members] == [("stripes", "2"), ("stripes-b", "1")]
    assert len(members) == 2


def test_an_ensemble_member_must_share_the_label_space(folder_run: Path, trained_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(trained_repository, repository)
    with pytest.raises(ConfigError, match="label space"):
        export_run(folder_run, repository, name="stripes", ensemble=True, check_images=2)
    assert [m.name for m in read_repository(repository)[0].members] == ["resnet10t", "seresnet18", "resnest14d"]


def test_nothing_is_written_when_parity_fails(folder_run: Path, tmp_path: Path) -> None:
    run = load_run(folder_run)
    crops = tta_crops(build_splits(run.config.data).test.load(0), run.preprocess, (16, 18, 20))
    with pytest.raises(ExportParityError):
        export_to_repository(run.model, run_manifest(run, "stripes", "1"), tmp_path / "models", crops, tolerance=-1.0)
    assert not (tmp_path / "models").exists()


def test_fashion_mnist_repository_is_valid_and_matches_pytorch(
    trained_repository: Path, trained_runs: dict[str, Path], fmnist_test_images
) -> None:
    spec, members = read_repository(trained_repository)
    assert [m.name for m in spec.members] == ["resnet10t", "seresnet18", "resnest14d"] and spec.strategy == "vote"
    for member in members:
        manifest = member.manifest
        assert manifest.preprocess.in_chans == 1 and manifest.preprocess.tta_sizes == (28, 32, 36) and manifest.loss.name == "bsce"
        assert manifest.metrics["onnx_max_abs_logit_diff"] <= MAX_LOGIT_DIFF
        assert manifest.labels[0] == "T-shirt/top" and len(manifest.class_counts) == 10

    # ONNX members through the service's engine vs. the PyTorch models, crop by crop.
    ensemble = Ensemble.load(trained_repository, "cpu")
    from app.contract.preprocess import decode_image

    images = [decode_image(data, 1, 10_000) for data in fmnist_test_images.images[:12]]
    for member, (name, run_dir) in zip(ensemble.members, trained_runs.items()):
        run = load_run(run_dir)
        crops = np.concatenate([tta_crops(image, run.preprocess, (28, 32, 36)) for image in images])
        with torch.no_grad():
            expected = run.model(torch.from_numpy(crops)).numpy()
        assert np.abs(member.logits(crops) - expected).max() <= MAX_LOGIT_DIFF, name


def test_an_untrained_model_goes_through_the_real_export(tmp_path: Path, fmnist_test_images):
    """export_untrained (the smoke test's and the serving benchmark's models): parity-checked, loadable."""
    import io

    import timm
    from PIL import Image

    from app.contract.preprocess import PreprocessConfig
    from training.export import UNTRAINED_VERSION, export_untrained, write_default_ensemble

    preprocess = PreprocessConfig(input_size=28, in_chans=1, mean=(0.3,), std=(0.35,), tta_sizes=(28, 32))
    photos = [Image.open(io.BytesIO(data)) for data in fmnist_test_images.images[:2]]
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    manifest = export_untrained(model, tmp_path, "tiny", "test_resnet", preprocess, list("abcdefghij"), photos, "a test")
    write_default_ensemble(tmp_path, [("tiny", UNTRAINED_VERSION)])
    assert manifest.version == UNTRAINED_VERSION and manifest.training_command == "untrained (random weights): a test"
    assert manifest.metrics["onnx_max_abs_logit_diff"] <= MAX_LOGIT_DIFF
    ensemble = Ensemble.load(tmp_path, "cpu")
    assert ensemble.crop_plan(True) == [(preprocess, (28, 32))]
    probs, rankings = ensemble.predict(photos, top_k=3)
    assert probs.shape == (1, 2, 10) and all(len(ranking.indices) == 3 for ranking in rankings)


def test_the_service_warns_when_it_resamples_with_another_pillow_than_evaluation(
    trained_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    import PIL

    from app.engine.ensemble import warn_on_other_pillow

    manifest = read_repository(trained_repository)[1][0].manifest
    assert manifest.metrics["pillow"] == PIL.__version__  # export records the build it evaluated with
    with caplog.at_level("WARNING", logger="productrec.inference"):
        assert not warn_on_other_pillow(manifest)
        assert not caplog.records
        other = dataclasses.replace(manifest, metrics={**manifest.metrics, "pillow": "12.1.1.post0"})
        assert warn_on_other_pillow(other)
    assert "evaluated with Pillow 12.1.1.post0 and is served with Pillow " + PIL.__version__ in caplog.text
