"""Average-k label sets and calibrated probabilities over HTTP, against a real exported ensemble."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import serving

from app.contract.calibration import label_set_sizes
from app.contract.manifest import MANIFEST_FILE
from app.contract.preprocess import decode_image
from app.engine.ensemble import Ensemble


@pytest.fixture(scope="module")
def client(trained_repository):
    with serving(trained_repository, default_top_k=3) as client:
        yield client


@pytest.fixture(scope="module")
def engine(trained_repository) -> Ensemble:
    return Ensemble.load(trained_repository, "cpu")


def test_members_carry_a_temperature_and_thresholds_fitted_at_export(engine: Ensemble) -> None:
    for member in engine.members:
        calibration = member.manifest.calibration
        assert calibration is not None and calibration.temperature > 0 and calibration.validation_images == 100
        assert len(calibration.average_k_thresholds) == 5 == engine.max_average_k
        assert set(member.manifest.metrics["validation"]["tta_sets"]) >= {"28", "28/32/36"}


def test_average_k_sets_vary_per_image_and_say_their_mode(client, engine: Ensemble, fmnist_test_images) -> None:
    images = fmnist_test_images.images
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    for k in (1, 3):
        results = client.post("/v1/predict/batch", files=files, params={"average_k": k}).json()["results"]
        sizes = [len(item["prediction"]["labels"]) for item in results]
        assert all(item["prediction"]["mode"] == "average_k" for item in results)
        decoded = [decode_image(data, 1, 10**6) for data in images]
        probs, rankings = engine.predict(decoded, top_k=1)
        expected = label_set_sizes(probs.mean(axis=0), engine.label_set_threshold(k))
        assert sizes == expected.tolist()
        assert [item["prediction"]["labels"][0]["index"] for item in results] == [r.indices[0] for r in rankings]
    assert len(set(sizes)) > 1  # adaptive: not a fixed k
    single = client.post("/v1/predict", files={"file": ("a.png", images[0], "image/png")}, data={"average_k": "2"}).json()
    assert single["mode"] == "average_k"
    assert client.post("/v1/predict", files={"file": ("a.png", images[0], "image/png")}).json()["mode"] == "top_k"


def test_average_k_is_refused_beyond_the_thresholds_with_top_k_or_without_calibration(
    client, trained_repository: Path, tmp_path: Path, fmnist_test_images
) -> None:
    file = {"file": ("a.png", fmnist_test_images.images[0], "image/png")}
    for params, message in [({"average_k": 6}, "between 1 and 5"), ({"average_k": 2, "top_k": 2}, "not both")]:
        response = client.post("/v1/predict", files=file, params=params)
        assert response.status_code == 422 and message in response.json()["detail"]
    uncalibrated = tmp_path / "models"
    shutil.copytree(trained_repository, uncalibrated)
    for path in uncalibrated.glob(f"*/*/{MANIFEST_FILE}"):
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps({**manifest, "calibration": None}))
    with serving(uncalibrated) as old:
        response = old.post("/v1/predict", files=file, params={"average_k": 1})
        assert response.status_code == 422 and "calibrated" in response.json()["detail"]


def test_the_mean_set_size_on_validation_is_k_for_one_member(trained_runs, trained_repository: Path) -> None:
    """Average-k thresholds of one member reproduce their average size on the validation split they were fitted on."""
    from training.data import build_splits
    from training.runs import load_run

    name = next(iter(trained_runs))
    run = load_run(trained_runs[name])
    engine = Ensemble.load(trained_repository, "cpu")
    member = next(m for m in engine.members if m.manifest.name == name)
    single = Ensemble(engine.spec.__class__(name, [engine.spec.members[0].__class__(name, "1")]), [member])
    val = build_splits(run.config.data).val
    probs, _ = single.predict([val.load(i) for i in range(len(val))], top_k=1)
    for k in (1, 2, 3):
        sizes = (probs[0] >= single.label_set_threshold(k)).sum(axis=1)
        assert sizes.mean() == pytest.approx(k, abs=0.05)
    assert np.isfinite(probs).all()
