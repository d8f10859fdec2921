"""The readiness contract: a missing, corrupt or mismatched member means live but not ready, with the file named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from serving_helpers import metric, serving

from app.engine.ensemble import ProviderUnavailableError
from app.contract.manifest import ENSEMBLE_FILE, MANIFEST_FILE, MODEL_FILE, sha256_file


@pytest.fixture
def repository(trained_repository, tmp_path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(trained_repository, copy)
    return copy


def member_dirs(repository: Path) -> list[Path]:
    spec = json.loads((repository / ENSEMBLE_FILE).read_text())
    return [repository / member["name"] / member["version"] for member in spec["members"]]


def edit_manifest(directory: Path, **changes) -> None:
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def missing_model(repository: Path) -> str:
    path = member_dirs(repository)[1] / MODEL_FILE
    path.unlink()
    return str(path)


def mismatched_sha256(repository: Path) -> str:
    path = member_dirs(repository)[0] / MODEL_FILE
    with open(path, "ab") as handle:
        handle.write(b"\0")
    return str(path)


def corrupt_model_with_matching_manifest(repository: Path) -> str:
    directory = member_dirs(repository)[2]
    path = directory / MODEL_FILE
    path.write_bytes(b"this is not an onnx graph")
    edit_manifest(directory, sha256=sha256_file(path))
    return str(path)


def missing_ensemble_file(repository: Path) -> str:
    path = repository / ENSEMBLE_FILE
    path.unlink()
    return str(path)


def invalid_strategy(repository: Path) -> str:
    path = repository / ENSEMBLE_FILE
    spec = json.loads(path.read_text())
    spec["strategy"] = "majority"
    path.write_text(json.dumps(spec))
    return str(path)


def wrong_class_count(repository: Path) -> str:
    for directory in member_dirs(repository):
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        edit_manifest(directory, labels=[*manifest["labels"], "extra"], class_counts=[])
    return str(member_dirs(repository)[0] / MODEL_FILE)


@pytest.mark.parametrize(
    ("break_repository", "reason"),
    [
        (missing_model, "model file not found"),
        (mismatched_sha256, "does not match the manifest"),
        (corrupt_model_with_matching_manifest, "onnxruntime cannot load"),
        (missing_ensemble_file, "file not found"),
        (invalid_strategy, "strategy must be one of"),
        (wrong_class_count, "classes but the manifest lists"),
    ],
)
def test_broken_repository_is_live_but_not_ready(
    repository, break_repository, reason, caplog, fmnist_test_images
) -> None:
    named_file = break_repository(repository)
    with caplog.at_level(logging.ERROR, logger="productrec.app"):
        with serving(repository) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"] == "not_ready"
            assert named_file in ready.json()["detail"] and reason in ready.json()["detail"]
            predict = client.post(
                "/v1/predict", content=fmnist_test_images.images[0], headers={"Content-Type": "image/png"}
            )
            assert predict.status_code == 503 and predict.json()["error"] == "not_ready"
            assert "Retry-After" in predict.headers
            assert client.get("/v1/models").status_code == 503
            assert metric(client.get("/metrics").text, "productrec_ready") == 0
    assert any(named_file in record.getMessage() for record in caplog.records)


def test_missing_repository_is_not_ready(tmp_path) -> None:
    with serving(tmp_path / "nowhere") as client:
        detail = client.get("/readyz").json()["detail"]
    assert str(tmp_path / "nowhere" / ENSEMBLE_FILE) in detail


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_required_without_cuda_refuses_to_start(trained_repository) -> None:
    with pytest.raises(ProviderUnavailableError):
        with serving(trained_repository, provider="cuda"):
            pass


def test_intact_copy_is_ready(repository) -> None:
    with serving(repository, decode_workers=1) as client:
        assert client.get("/readyz").json()["ready"] is True
