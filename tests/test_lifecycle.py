"""The model lifecycle: versions, "latest", explicit and poll control, and reloads under load with no failed request."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving_helpers import metric, productrec_serve, serving

from app.contract.manifest import ENSEMBLE_FILE, MODEL_FILE, member_dir

MEMBERS = ("resnet10t", "seresnet18", "resnest14d")


@pytest.fixture(scope="module")
def images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images[::7][:6]


@pytest.fixture
def repository(trained_repository: Path, tmp_path: Path) -> Path:
    """A copy of the trained repository that a test may change."""
    copy = tmp_path / "models"
    shutil.copytree(trained_repository, copy)
    return copy


def write_ensemble(repository: Path, versions: dict[str, str], strategy: str = "vote") -> None:
    members = [{"name": name, "version": versions.get(name, "1")} for name in MEMBERS]
    staged = repository / (ENSEMBLE_FILE + ".tmp")
    staged.write_text(json.dumps({"name": "default", "strategy": strategy, "members": members}))
    staged.replace(repository / ENSEMBLE_FILE)


def add_version(repository: Path, name: str, version: str, broken: bool = False) -> None:
    target = member_dir(repository, name, version)
    shutil.copytree(member_dir(repository, name, "1"), target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    if broken:  # the manifest's sha256 no longer matches: the load must be refused
        with open(target / MODEL_FILE, "ab") as handle:
            handle.write(b"\0")


def v2_request(image: bytes) -> dict:
    data = base64.b64encode(image).decode()
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [data], "parameters": {"content_type": "base64"}}
    return {"inputs": [tensor], "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}


def served_v2(answer: dict) -> tuple:
    members = answer["parameters"]["members"].split(",")
    return answer["parameters"]["strategy"], tuple(tuple(member.split(":")) for member in members)


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def served(answer: dict) -> tuple:
    return answer["strategy"], tuple((member["name"], member["version"]) for member in answer["members"])


def test_index_load_unload_and_a_refused_load(repository: Path, images) -> None:
    add_version(repository, "resnet10t", "2", broken=True)
    with serving(repository, model_control_mode="explicit", decode_workers=1) as client:
        index = client.post("/v2/repository/index").json()
        assert {"name": "default", "version": "1", "state": "READY", "reason": ""} in index
        assert {"name": "resnet10t", "version": "2", "state": "UNAVAILABLE", "reason": "not in the served ensemble"} in index
        assert client.post("/v2/repository/index", json={"ready": True}).json() == [i for i in index if i["state"] == "READY"]
        assert client.post("/v2/repository/models/nothing/load").status_code == 404

        write_ensemble(repository, {"resnet10t": "2"})
        refused = client.post("/v2/repository/models/default/load")
        assert refused.status_code == 400 and "sha256" in refused.text
        answer = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).json()
        assert served(answer)[1][0] == ("resnet10t", "1")  # the old ensemble still serves
        ensemble = next(item for item in client.post("/v2/repository/index").json() if item["name"] == "default")
        assert ensemble["state"] == "READY" and "sha256" in ensemble["reason"]
        assert metric(client.get("/metrics").text, "productrec_model_loads_total", result="failed") == 1

        assert client.post("/v2/repository/models/default/unload").status_code == 200
        assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 503
        assert client.get("/readyz").status_code == 503
        write_ensemble(repository, {})
        assert client.post("/v2/repository/models/resnet10t/load").status_code == 200  # a member's name loads its ensemble
        assert client.get("/readyz").status_code == 200


def test_loads_need_explicit_mode_and_the_management_key(repository: Path) -> None:
    with serving(repository, decode_workers=1) as client:
        assert client.post("/v2/repository/models/default/load").status_code == 404  # only in explicit mode
        assert client.post("/v2/repository/index").status_code == 200
    with serving(repository, model_control_mode="explicit", decode_workers=1, api_key="k", management_api_key="m") as client:
        assert client.post("/v2/repository/index", headers={"X-API-Key": "k"}).status_code == 401
        assert client.post("/v2/repository/index", headers={"X-Management-Key": "m"}).status_code == 401
        both = {"X-API-Key": "k", "X-Management-Key": "m"}
        assert client.post("/v2/repository/models/default/load", headers=both).status_code == 200


def test_latest_follows_the_highest_version_in_poll_mode(repository: Path, images) -> None:
    write_ensemble(repository, {"seresnet18": "latest"})
    with serving(repository, model_control_mode="poll", repository_poll_s=0.1, decode_workers=1) as client:
        def seresnet_version() -> str:
            answer = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).json()
            return dict(served(answer)[1])["seresnet18"]

        assert seresnet_version() == "1"
        add_version(repository, "seresnet18", "10")  # numeric order: 10 is after 2..9
        deadline = time.monotonic() + 20
        while seresnet_version() != "10":
            assert time.monotonic() < deadline, "poll mode never loaded the new latest version"
            time.sleep(0.1)


def test_five_reloads_under_load_fail_no_request(repository: Path, images) -> None:
    """Concurrency 16 (/v1 and v2) while the ensemble is reloaded five times: every answer is from one complete ensemble."""
    add_version(repository, "resnet10t", "2")
    add_version(repository, "resnest14d", "3")
    add_version(repository, "seresnet18", "4", broken=True)
    base = ("vote", tuple((name, "1") for name in MEMBERS))
    steps = [  # (what ensemble.json says, what must be served after the load, or None: refused)
        (({"resnet10t": "2"}, "vote"), ("vote", (("resnet10t", "2"), ("seresnet18", "1"), ("resnest14d", "1")))),
        (({"resnet10t": "2"}, "mean"), ("mean", (("resnet10t", "2"), ("seresnet18", "1"), ("resnest14d", "1")))),
        (({"resnet10t": "2", "resnest14d": "latest"}, "mean"), ("mean", (("resnet10t", "2"), ("seresnet18", "1"), ("resnest14d", "3")))),
        (({"seresnet18": "4"}, "vote"), None),
        (({}, "vote"), base),
    ]
    allowed = {base} | {after for _, after in steps if after is not None}
    seen: list[tuple] = []
    failures: list[str] = []
    stop = threading.Event()
    with serving(repository, model_control_mode="explicit", decode_workers=2, queue_limit=256) as client:
        def hammer(worker: int) -> int:
            """Half the workers ask /v1/predict, half v2 infer; both answers say which members served them."""
            count = 0
            while not stop.is_set():
                image = images[(worker + count) % len(images)]
                if worker % 2:
                    response = client.post("/v2/models/default/infer", json=v2_request(image))
                else:
                    response = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    seen.append(served_v2(response.json()) if worker % 2 else served(response.json()))
                count += 1
            return count

        with ThreadPoolExecutor(16) as threads:
            counts = [threads.submit(hammer, worker) for worker in range(16)]
            try:
                current = base
                for (versions, strategy), expected in steps:
                    time.sleep(0.3)
                    write_ensemble(repository, versions, strategy)
                    response = client.post("/v2/repository/models/default/load")
                    assert response.status_code == (200 if expected else 400), response.text
                    current = expected or current
                    wait_for(lambda: seen[-1] == current)  # once the admitted requests drain, answers switch
            finally:
                stop.set()
            total = sum(count.result() for count in counts)
    assert failures == [] and total == len(seen) > 50
    assert set(seen) <= allowed, f"an answer came from a mix of ensembles: {set(seen) - allowed}"


def test_every_worker_follows_the_repository_in_poll_mode(repository: Path, images, tmp_path: Path) -> None:
    """With --workers 2 each worker polls the repository itself: both load the new version (metrics count 2 + 2)."""
    options = ["--workers", "2", "--decode-workers", "1", "--model-control-mode", "poll", "--repository-poll-s", "0.2"]
    with productrec_serve(repository, tmp_path, options) as base:
        wait_for(lambda: metric(httpx.get(f"{base}/metrics").text, "productrec_model_loads_total", result="loaded") == 2)
        add_version(repository, "resnet10t", "2")
        write_ensemble(repository, {"resnet10t": "2"})
        wait_for(lambda: metric(httpx.get(f"{base}/metrics").text, "productrec_model_loads_total", result="loaded") == 4)
        for _ in range(8):  # new connections, so both workers answer some
            answer = httpx.post(f"{base}/v1/predict", content=images[0], headers={"Content-Type": "image/png", "Connection": "close"})
            assert answer.status_code == 200 and served(answer.json())[1][0] == ("resnet10t", "2")
