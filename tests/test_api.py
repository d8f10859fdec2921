"""The HTTP API against a real ensemble trained and exported by `training`: answers, options, batch, metrics."""

from __future__ import annotations

import inspect
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_helpers import assert_same_ranking, encode, metric, noise_image, productrec_serve, serving

from app.contract.calibration import label_set_sizes
from app.contract.manifest import MANIFEST_FILE
from app.engine.ensemble import Ensemble
from app.contract.preprocess import decode_image


@pytest.fixture(scope="module")
def client(trained_repository):
    with serving(trained_repository, default_top_k=3) as client:
        yield client


@pytest.fixture(scope="module")
def engine(trained_repository) -> Ensemble:
    """The same repository through the engine directly: the reference the service must match."""
    return Ensemble.load(trained_repository, "cpu")


@pytest.fixture(scope="module")
def images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images[::7][:6]  # several classes


def expected(engine: Ensemble, data: bytes, top_k: int, tta: bool):
    image = decode_image(data, max(m.manifest.preprocess.in_chans for m in engine.members), 10**8)
    probs, (ranking,) = engine.predict([image], top_k=top_k, tta=tta)
    return probs[:, 0], ranking


def assert_matches(prediction: dict, engine: Ensemble, data: bytes, top_k: int, tta: bool) -> None:
    member_probs, ranking = expected(engine, data, top_k, tta)
    assert_same_ranking(prediction["labels"], ranking.indices, ranking.scores, ranking.votes)
    assert all(label["label"] == engine.labels[label["index"]] for label in prediction["labels"])
    np.testing.assert_allclose(
        [member["score"] for member in prediction["members"]], member_probs.max(axis=1), atol=1e-5
    )
    assert prediction["tta"] is tta


def test_health_readiness_and_models(client, engine) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "members": len(engine.members)}
    models = client.get("/v1/models").json()
    assert models["num_classes"] == engine.num_classes == len(models["labels"])
    assert models["strategy"] == engine.strategy
    assert [(m["name"], m["version"]) for m in models["members"]] == [
        (m.manifest.name, str(m.manifest.version)) for m in engine.members
    ]
    for info, member in zip(models["members"], engine.members):
        assert info["input_size"] == member.manifest.preprocess.input_size
        assert info["tta_sizes"] == list(member.manifest.preprocess.tta_sizes)
        assert info["providers"] == ["CPUExecutionProvider"]
    assert len({m["architecture"] for m in models["members"]}) == len(engine.members)


def test_predict_multipart_matches_the_engine(client, engine, images) -> None:
    for data in images:
        response = client.post("/v1/predict", files={"file": ("item.png", data, "image/png")})
        assert response.status_code == 200, response.text
        prediction = response.json()
        assert len(prediction["labels"]) == 3  # default_top_k
        assert_matches(prediction, engine, data, top_k=3, tta=True)
        assert prediction["ensemble"] == engine.spec.name
        assert [m["version"] for m in prediction["members"]] == [str(m.manifest.version) for m in engine.members]
        assert set(prediction["timings"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
        assert prediction["timings"]["total_ms"] >= prediction["timings"]["inference_ms"] > 0


def test_raw_body_gives_the_same_answer_as_multipart(client, images) -> None:
    multipart = client.post("/v1/predict", files={"file": ("a.png", images[0], "image/png")}).json()
    raw = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).json()
    octets = client.post("/v1/predict", content=images[0], headers={"Content-Type": "application/octet-stream"}).json()
    assert raw["labels"] == multipart["labels"] == octets["labels"]


def test_top_k_orders_by_votes_then_mean_probability(client, engine, images) -> None:
    k = engine.num_classes
    for data in images:
        labels = client.post(
            "/v1/predict", params={"top_k": k}, content=data, headers={"Content-Type": "image/png"}
        ).json()["labels"]
        assert sorted(label["index"] for label in labels) == list(range(k))
        keys = [(-label["votes"], -label["score"]) for label in labels]
        assert keys == sorted(keys)
        assert sum(label["votes"] for label in labels) == len(engine.members)


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_top_k_as_query_or_form_field(client, engine, images, top_k) -> None:
    from_query = client.post("/v1/predict", params={"top_k": top_k}, files={"file": ("a.png", images[1])}).json()
    from_form = client.post("/v1/predict", data={"top_k": str(top_k)}, files={"file": ("a.png", images[1])}).json()
    assert from_query["labels"] == from_form["labels"]
    assert_matches(from_query, engine, images[1], top_k=top_k, tta=True)


@pytest.mark.parametrize(
    ("params", "data"),
    [
        ({"top_k": 0}, {}),
        ({"top_k": 11}, {}),
        ({}, {"top_k": "11"}),
        ({}, {"top_k": "many"}),
        ({"tta": "perhaps"}, {}),
        ({}, {"tta": "perhaps"}),
    ],
)
def test_invalid_options_are_422_in_the_error_shape(client, images, params, data) -> None:
    if "top_k" in params and params["top_k"] == 11:
        params = {"top_k": client.get("/v1/models").json()["num_classes"] + 1}
    response = client.post("/v1/predict", params=params, data=data, files={"file": ("a.png", images[0])})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request" and body["detail"]


def test_tta_on_and_off(client, engine, images) -> None:
    differs = False
    for data in images:
        on = client.post(
            "/v1/predict", params={"tta": "true", "top_k": 3}, content=data, headers={"Content-Type": "image/png"}
        ).json()
        off = client.post(
            "/v1/predict", params={"tta": "false", "top_k": 3}, content=data, headers={"Content-Type": "image/png"}
        ).json()
        assert_matches(on, engine, data, top_k=3, tta=True)
        assert_matches(off, engine, data, top_k=3, tta=False)
        differs |= on["labels"][0]["score"] != off["labels"][0]["score"]
    assert differs, "multi-crop TTA changed no score: the crops are not being used"


def test_batch_mixes_good_and_bad_items(client, engine, images) -> None:
    truncated = images[2][: len(images[2]) // 2]
    files = [
        ("files", ("good-0.png", images[0], "image/png")),
        ("files", ("notes.txt", b"this is not an image", "text/plain")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("truncated.png", truncated, "image/png")),
        ("files", ("good-1.jpg", encode(noise_image(3, (40, 30), "RGB"), "JPEG"), "image/jpeg")),
        ("files", ("good-2.png", images[1], "image/png")),
    ]
    response = client.post("/v1/predict/batch", files=files, params={"top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [item["index"] for item in results] == list(range(6))
    assert [item["filename"] for item in results] == [name for _, (name, _, _) in files]
    assert [item["status"] for item in results] == [200, 415, 400, 415, 200, 200]
    assert (body["succeeded"], body["failed"]) == (3, 3)
    for item in results:
        assert (item["prediction"] is None) == (item["status"] != 200)
        assert (item["error"] is None) == (item["status"] == 200)
    assert results[1]["error"]["error"] == "unsupported_image"
    assert results[2]["error"]["error"] == "empty_file"
    assert_matches(results[0]["prediction"], engine, images[0], top_k=2, tta=True)
    assert_matches(results[5]["prediction"], engine, images[1], top_k=2, tta=True)
    assert results[4]["prediction"]["labels"][0]["label"] in engine.labels


def test_batch_needs_files(client) -> None:
    response = client.post("/v1/predict/batch", data={"top_k": "2"}, files={"other": ("x.png", b"123")})
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    response = client.post("/v1/predict/batch", content=b"123", headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


def test_errors_of_fastapi_itself_use_the_error_shape(client) -> None:
    for response, status in [
        (client.get("/v1/predict"), 405),
        (client.get("/no/such/page"), 404),
        (client.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"}), 415),
        (client.post("/v1/predict", files={"image": ("a.png", b"1")}), 422),
        (client.post("/v1/predict", data={"file": "not a file part"}, files={"x": ("a", b"")}), 422),
    ]:
        assert response.status_code == status
        assert set(response.json()) == {"error", "detail"}


def test_metrics_count_requests_errors_batches_and_member_time(client, engine, images) -> None:
    before = client.get("/metrics").text
    for data in images[:3]:
        assert client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"}).status_code == 200
    assert client.post("/v1/predict", content=b"junk", headers={"Content-Type": "image/png"}).status_code == 415
    files = [("files", ("a.png", images[0])), ("files", ("b.txt", b"junk"))]
    assert client.post("/v1/predict/batch", files=files).status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    requests = "productrec_http_requests_total"
    assert delta(requests, endpoint="/v1/predict", method="POST", status="200") == 3
    assert delta(requests, endpoint="/v1/predict", method="POST", status="415") == 1
    assert delta(requests, endpoint="/v1/predict/batch", method="POST", status="200") == 1
    errors = "productrec_http_errors_total"
    assert delta(errors, endpoint="/v1/predict", status="415", error="unsupported_image") == 1
    assert delta(errors, endpoint="/v1/predict/batch", status="415", error="unsupported_image") == 1
    assert delta("productrec_http_request_duration_seconds_count", endpoint="/v1/predict") == 4
    assert delta("productrec_images_total", tta="true") == 4
    assert delta("productrec_batch_size_sum") == 4  # images through the batcher
    assert delta("productrec_decode_seconds_count") == 4
    for member in engine.members:
        assert delta("productrec_member_inference_seconds_count", member=member.manifest.name) >= 1
    assert metric(after, "productrec_ready") == 1
    assert "# TYPE productrec_queue_depth gauge" in after
    assert metric(after, "productrec_queue_depth") == 0


def test_openapi_documents_bodies_and_errors(client) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream"}
    assert {"400", "413", "415", "422", "503"} <= set(predict["responses"])
    assert predict["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {param["name"] for param in predict["parameters"]} >= {"top_k", "tta"}
    batch = spec["paths"]["/v1/predict/batch"]["post"]
    assert "files" in batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for path in ("/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    assert spec["components"]["schemas"]["Prediction"]["examples"]


def test_api_key_guards_the_api_but_not_the_probes(trained_repository, images) -> None:
    with serving(trained_repository, api_key="s3cret", decode_workers=1) as client:
        assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 401
        wrong = client.get("/v1/models", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        right = client.post(
            "/v1/predict", content=images[0], headers={"Content-Type": "image/png", "X-API-Key": "s3cret"}
        )
        assert right.status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_productrec_serve_answers_a_real_http_client(trained_repository, images, tmp_path) -> None:
    options = ["--decode-workers", "1", "--max-batch-items", "8"]
    with productrec_serve(trained_repository, tmp_path, options, env={"PRODUCTREC_TTA": "false"}) as base:
        response = httpx.post(f"{base}/v1/predict", files={"file": ("item.png", images[0], "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        prediction = response.json()
        assert prediction["tta"] is False  # from the environment
        assert len(prediction["labels"]) == 5 and prediction["labels"][0]["label"]
        models = httpx.get(f"{base}/v1/models", timeout=10).json()
        assert models["tta_default"] is False and models["default_top_k"] == 5


def test_metrics_count_every_worker_with_two_workers(trained_repository, images, tmp_path) -> None:
    """With --workers 2 each scrape reaches one worker, and must still count the requests both answered."""
    requests, concurrency = 32, 8

    def post_until_answered(index: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:  # its own connection: requests reach both workers
            while (response := client.post("/v1/predict", content=images[index % len(images)],
                                           headers={"Content-Type": "image/png"})).status_code == 503:
                time.sleep(0.1)  # the other worker is still loading; 503s are counted apart
            assert response.status_code == 200, response.text

    with productrec_serve(trained_repository, tmp_path, ["--workers", "2", "--decode-workers", "1"]) as base:
        with ThreadPoolExecutor(concurrency) as threads:
            list(threads.map(post_until_answered, range(requests)))
        deadline = time.monotonic() + 60  # every request may have reached the first worker while the second loads
        while metric(httpx.get(f"{base}/metrics", headers={"Connection": "close"}).text, "productrec_ready") != 1:
            assert time.monotonic() < deadline, "the second worker never became ready"
            time.sleep(0.2)
        scrapes = [httpx.get(f"{base}/metrics", headers={"Connection": "close"}).text for _ in range(8)]
    for text in scrapes:
        assert metric(text, "productrec_http_requests_total", endpoint="/v1/predict", method="POST", status="200") == requests
        assert metric(text, "productrec_images_total", tta="true") == requests
        assert metric(text, "productrec_ready") == 1
        assert 'pid="' not in text, "multiprocess samples must be aggregated, not listed per worker"


def test_every_dependency_runs_on_the_event_loop():
    """FastAPI runs a plain ``def`` dependency in a thread pool: a thread hand-off per dependency per request
    (it was most of the HTTP layer's CPU in docs/serving-benchmark.md), so every one must be ``async``."""
    from app.api.routes import health, metrics, models, predict, repository, v2

    def calls(dependant):
        for dependency in dependant.dependencies:
            yield dependency.call
            yield from calls(dependency)

    checked = 0
    routers = [module.router for module in (health, metrics, models, predict, repository, v2)] + [v2.models_router]
    routes = [route for router in routers for route in router.routes]
    for route in routes:
        for call in calls(route.dependant):
            on_loop = inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
            assert on_loop or inspect.iscoroutinefunction(type(call).__call__), (
                f"{route.path}: dependency {call!r} is not async"
            )
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- average-k label sets


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


def test_average_k_is_refused_beyond_the_thresholds_or_without_calibration_and_capped_by_top_k(
    client, trained_repository: Path, tmp_path: Path, fmnist_test_images
) -> None:
    file = {"file": ("a.png", fmnist_test_images.images[0], "image/png")}
    response = client.post("/v1/predict", files=file, params={"average_k": 6})
    assert response.status_code == 422 and "between 1 and 5" in response.json()["detail"]
    wide = [client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}, params={"average_k": 5}).json()
            for data in fmnist_test_images.images[:12]]
    capped = [client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}, params={"average_k": 5, "top_k": 2}).json()
              for data in fmnist_test_images.images[:12]]
    assert [answer["labels"][:2] for answer in wide] == [answer["labels"] for answer in capped]
    assert any(len(answer["labels"]) > 2 for answer in wide) and all(answer["mode"] == "average_k" for answer in capped)
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
