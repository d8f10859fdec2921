"""The model repository contract: manifest format 3 (nested preprocessing, loss and calibration); format-1 and -2 repositories still load."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import evaluate_repository

from app.contract.calibration import Calibration
from app.contract.manifest import FORMAT_VERSION, MANIFEST_FILE, ModelManifest, RepositoryError, load_manifest, read_repository
from app.contract.preprocess import PreprocessConfig

VERSION_1 = {  # a manifest as productrec wrote it before format 2
    "name": "resnet10t", "version": "1", "architecture": "resnet10t",
    "input_size": 28, "in_chans": 1, "mean": [0.286], "std": [0.353], "interpolation": "bilinear", "tta_sizes": [28, 32, 36],
    "labels": ["a", "b"], "class_counts": [10, 1],
    "loss": {"name": "bsce", "alpha": 0.4, "beta": 0.7, "log_zero": -9.21, "drw_epoch": None},
    "sha256": "0" * 64, "opset": 18, "input_name": "input", "output_name": "logits", "model_file": "model.onnx",
    "training_command": "productrec train", "data_fingerprint": "f", "metrics": {}, "train_config": {}, "format_version": 1,
}  # fmt: skip


def downgrade_to_version_1(manifest: dict) -> dict:
    """The format-1 shape of a current manifest: preprocessing fields and loss parameters flat, no calibration."""
    flat = {key: value for key, value in manifest.items() if key not in ("preprocess", "loss", "calibration")}
    loss = manifest["loss"]
    return {**flat, **manifest["preprocess"], "loss": {"name": loss["name"], **loss["params"]}, "format_version": 1}


def test_version_1_is_read_into_the_nested_form() -> None:
    manifest = ModelManifest.from_dict(VERSION_1)
    assert manifest.preprocess == PreprocessConfig(28, 1, (0.286,), (0.353,), "bilinear", (28, 32, 36))
    assert manifest.loss.name == "bsce" and manifest.loss.params == {"alpha": 0.4, "beta": 0.7, "log_zero": -9.21, "drw_epoch": None}
    assert manifest.format_version == FORMAT_VERSION
    written = manifest.to_dict()
    assert written["preprocess"]["tta_sizes"] == (28, 32, 36) and "input_size" not in written
    assert ModelManifest.from_dict(json.loads(json.dumps(written))) == manifest


def version_2() -> dict:
    """A manifest as productrec wrote it before format 3: nested, without calibration."""
    current = ModelManifest.from_dict(VERSION_1).to_dict()
    del current["calibration"]
    return {**current, "format_version": 2}


def test_version_2_is_read_uncalibrated_and_version_3_keeps_its_calibration() -> None:
    manifest = ModelManifest.from_dict(version_2())
    assert manifest.calibration is None and manifest.temperature == 1.0 and manifest.format_version == FORMAT_VERSION
    calibration = Calibration(1.7, 0.12, 0.02, 500, [0.5, 0.2], [0.8, 0.95])
    written = json.loads(json.dumps(dataclasses.replace(manifest, calibration=calibration).to_dict()))
    assert written["format_version"] == 3 and written["calibration"]["temperature"] == 1.7
    again = ModelManifest.from_dict(written)
    assert again.calibration == calibration and again.temperature == 1.7
    with pytest.raises(ValueError, match="unknown manifest keys"):
        ModelManifest.from_dict({**written, "format_version": 2, "temperature": 2.0})


def test_unknown_versions_and_bad_preprocessing_are_refused() -> None:
    with pytest.raises(ValueError, match="format_version 4"):
        ModelManifest.from_dict({**VERSION_1, "format_version": 4})
    with pytest.raises(ValueError, match="temperature"):
        ModelManifest.from_dict({**version_2(), "calibration": {"temperature": -1, "ece_before": 0, "ece_after": 0, "validation_images": 1}})
    with pytest.raises(ValueError, match="TTA size"):
        ModelManifest.from_dict({**VERSION_1, "tta_sizes": [20]})


def test_version_1_and_2_repositories_serve_the_same_answers_uncalibrated(trained_repository: Path, fmnist_test_images, tmp_path: Path) -> None:
    old, older = tmp_path / "v2", tmp_path / "v1"
    for copy in (old, older):
        shutil.copytree(trained_repository, copy)
    for path in trained_repository.glob(f"*/*/{MANIFEST_FILE}"):
        current = json.loads(path.read_text())
        assert current["format_version"] == FORMAT_VERSION and "preprocess" in current and current["calibration"]["temperature"] > 0
        relative = path.relative_to(trained_repository)
        (older / relative).write_text(json.dumps(downgrade_to_version_1(current)))
        uncalibrated = {key: value for key, value in current.items() if key != "calibration"}
        (old / relative).write_text(json.dumps({**uncalibrated, "format_version": 2}))
        assert json.loads(json.dumps(dataclasses.asdict(load_manifest((older / relative).parent)))) == {**uncalibrated, "calibration": None}
    spec, members = read_repository(older)
    assert [m.manifest.name for m in members] == [m.name for m in spec.members]
    images = fmnist_test_images.images[:8]
    calibrated, _ = evaluate_repository(trained_repository, images)
    expected, _ = evaluate_repository(old, images)
    actual, _ = evaluate_repository(older, images)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(calibrated.argmax(axis=2), expected.argmax(axis=2))  # T > 0 keeps each member's top-1


def test_a_broken_manifest_names_its_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**VERSION_1, "labels": ["only one"]}))
    with pytest.raises(RepositoryError, match=f"{MANIFEST_FILE}: invalid manifest: class_counts"):
        load_manifest(tmp_path)
