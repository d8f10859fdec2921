"""The v2 protocol (KServe's Open Inference Protocol, Triton's extensions) driven by the real tritonclient.http
against a real `productrec serve`, with the answers checked against /v1 and onnxruntime itself."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import numpy as np
import pytest
from serving_helpers import metric, productrec_serve, serving
from v2_helpers import SERVE_OPTIONS, assert_classification_matches, member_crops, onnx_logits, v1_labels

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.contract.manifest import read_repository  # noqa: E402
from app.contract.preprocess import decode_image  # noqa: E402

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def base_url(trained_repository, tmp_path_factory):
    with productrec_serve(trained_repository, tmp_path_factory.mktemp("v2"), SERVE_OPTIONS) as base:
        yield base


@pytest.fixture(scope="module")
def client(base_url):
    client = tritonclient_http.InferenceServerClient(base_url.removeprefix("http://"), concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def repository(trained_repository):
    spec, members = read_repository(trained_repository)
    return spec, members


@pytest.fixture(scope="module")
def images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images[::7][:6]


def bytes_input(images: list[bytes], binary: bool = True):
    tensor = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    return tensor


def test_server_and_model_metadata(client, repository) -> None:
    spec, members = repository
    assert client.is_server_live() and client.is_server_ready()
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(client.get_server_metadata()["extensions"])
    assert client.is_model_ready(spec.name)
    num_classes = members[0].manifest.num_classes
    metadata = client.get_model_metadata(spec.name)
    assert metadata["name"] == spec.name
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]}]
    for member in members:
        manifest = member.manifest
        size, channels = manifest.preprocess.input_size, manifest.preprocess.in_chans
        assert client.is_model_ready(manifest.name, str(manifest.version))
        metadata = client.get_model_metadata(manifest.name, str(manifest.version))
        assert metadata["versions"] == [str(manifest.version)]
        assert metadata["inputs"] == [{"name": manifest.input_name, "datatype": "FP32", "shape": [-1, channels, size, size]}]
        config = client.get_model_config(manifest.name)
        assert config["max_batch_size"] == 8
        assert config["input"] == [{"name": manifest.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [channels, size, size]}]
        assert config["output"] == [{"name": manifest.output_name, "data_type": "TYPE_FP32", "dims": [num_classes]}]
    assert client.get_model_config(spec.name)["input"][0]["data_type"] == "TYPE_STRING"


def test_ensemble_binary_batch_classification_equals_v1(client, base_url, repository, images) -> None:
    spec, members = repository
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(spec.name, [bytes_input(images)], outputs=outputs)
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(images), 3)
    for row, data in zip(classes, images):
        assert_classification_matches(row, v1_labels(base_url, data))

    probabilities = client.infer(spec.name, [bytes_input(images)]).as_numpy("probabilities")
    assert probabilities.shape == (len(images), members[0].manifest.num_classes) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    for row, probs in zip(classes, probabilities):
        score, index, _ = row[0].decode().split(":", 2)
        assert probs[int(index)] == pytest.approx(float(score), abs=1e-5)


def test_member_binary_fp32_logits_equal_onnxruntime(client, repository, images) -> None:
    _, members = repository
    for member in members:
        crops = member_crops(member.manifest, images)
        tensor = tritonclient_http.InferInput(member.manifest.input_name, list(crops.shape), "FP32")
        tensor.set_data_from_numpy(crops)
        result = client.infer(member.manifest.name, [tensor], model_version=str(member.manifest.version))
        assert result.get_response()["model_version"] == str(member.manifest.version)
        np.testing.assert_allclose(result.as_numpy(member.manifest.output_name), onnx_logits(member, crops), atol=1e-4)


def test_json_only_requests(client, base_url, repository, images) -> None:
    spec, members = repository
    member = members[0]
    crops = member_crops(member.manifest, images[:2])
    tensor = tritonclient_http.InferInput(member.manifest.input_name, list(crops.shape), "FP32")
    tensor.set_data_from_numpy(crops, binary_data=False)
    output = tritonclient_http.InferRequestedOutput(member.manifest.output_name, binary_data=False)
    result = client.infer(member.manifest.name, [tensor], outputs=[output])
    assert "binary_data_size" not in json.dumps(result.get_response())
    np.testing.assert_allclose(result.as_numpy(member.manifest.output_name), onnx_logits(member, crops), atol=1e-4)

    # Encoded images cannot be JSON strings: base64 with content_type, as MLServer does.
    body = {
        "id": "json-1",
        "parameters": {"top_k": 3},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(images[0]).decode()]}],
    }
    response = httpx.post(f"{base_url}/v2/models/{spec.name}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "json-1" and answer["model_name"] == spec.name
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 3] and output["datatype"] == "BYTES"
    assert_classification_matches(np.array([s.encode() for s in output["data"]]), v1_labels(base_url, images[0]))


def test_raw_binary_request_of_one_image(base_url, repository, images) -> None:
    spec, _ = repository
    response = httpx.post(f"{base_url}/v2/models/{spec.name}/infer", content=images[0], headers={HEADER: "0"})
    assert response.status_code == 200, response.text
    json_length = int(response.headers[HEADER])
    header = json.loads(response.content[:json_length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - json_length


def test_concurrent_async_infer(client, base_url, repository, images) -> None:
    spec, _ = repository
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", class_count=3)]
    pending = [client.async_infer(spec.name, [bytes_input([data])], outputs=outputs) for data in images * 2]
    results = [request.get_result(timeout=60) for request in pending]
    for result, data in zip(results, images * 2):
        assert_classification_matches(result.as_numpy("probabilities")[0], v1_labels(base_url, data))


def test_the_flow_of_tritons_image_client(client, repository, images) -> None:
    """image_client.py's parse_model / preprocess / postprocess, with the dicts its HTTP path uses."""
    from tritonclient.grpc import model_config_pb2 as mc

    _, members = repository
    name = members[1].manifest.name
    metadata, config = client.get_model_metadata(name), client.get_model_config(name)
    assert len(metadata["inputs"]) == 1 and len(metadata["outputs"]) == 1 and len(config["input"]) == 1
    assert metadata["outputs"][0]["datatype"] == "FP32"
    assert config["max_batch_size"] > 0 and len(metadata["inputs"][0]["shape"]) == 4
    assert dict(mc.ModelInput.Format.items())[config["input"][0]["format"]] == mc.ModelInput.FORMAT_NCHW
    _, c, h, w = metadata["inputs"][0]["shape"]
    image = decode_image(images[0], c, 10**8).resize((w, h))
    pixels = np.asarray(image, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1)[None]
    tensor = tritonclient_http.InferInput(metadata["inputs"][0]["name"], list(pixels.shape), metadata["inputs"][0]["datatype"])
    tensor.set_data_from_numpy(pixels)
    output = tritonclient_http.InferRequestedOutput(metadata["outputs"][0]["name"], class_count=2)
    (row,) = client.infer(name, [tensor], outputs=[output]).as_numpy(metadata["outputs"][0]["name"])
    for element in row:
        score, index, label = element.decode().split(":")
        assert float(score) == float(score) and label == members[1].manifest.labels[int(index)]


def _binary_body(document: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def _bad_requests(spec_name: str, member) -> list[tuple[str, bytes, dict[str, str], int]]:
    image = {"name": "image", "datatype": "BYTES", "shape": [1]}
    element = struct.pack("<I", 3) + b"abc"
    manifest = member.manifest
    shape = [1, manifest.preprocess.in_chans, manifest.preprocess.input_size, manifest.preprocess.input_size]
    size = math.prod(shape) * 4
    cases = [
        ("wrong datatype", {"inputs": [{**image, "datatype": "FP32", "data": [1.0]}]}, [], 400),
        ("wrong shape", {"inputs": [{**image, "shape": [1, 2], "data": ["a", "b"]}]}, [], 400),
        ("shape and data differ", {"inputs": [{**image, "shape": [2], "data": ["a"]}]}, [], 400),
        ("garbage binary size", {"inputs": [{**image, "parameters": {"binary_data_size": 10**6}}]}, [element], 400),
        ("negative binary size", {"inputs": [{**image, "parameters": {"binary_data_size": -1}}]}, [element], 400),
        ("bytes left over", {"inputs": [{**image, "parameters": {"binary_data_size": len(element)}}]}, [element, b"xx"], 400),
        ("element past the end", {"inputs": [{**image, "parameters": {"binary_data_size": 4}}]}, [struct.pack("<I", 9)], 400),
        ("not an image", {"inputs": [{**image, "parameters": {"binary_data_size": len(element)}}]}, [element], 415),
        ("unknown output", {"inputs": [{**image, "data": ["a"]}], "outputs": [{"name": "nope"}]}, [], 400),
        ("classification 0", {"inputs": [{**image, "data": ["a"]}], "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]}, [], 400),
        ("too many images", {"inputs": [{**image, "shape": [9], "data": ["a"] * 9}]}, [], 413),
        ("no inputs", {"inputs": []}, [], 400),
    ]
    requests = [(f"/v2/models/{spec_name}/infer", *_binary_body(document, *chunks), status) for _, document, chunks, status in cases]
    member_url = f"/v2/models/{manifest.name}/infer"
    wrong = {"name": manifest.input_name, "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.0] * 4}
    int64 = {"name": manifest.input_name, "datatype": "INT64", "shape": shape, "parameters": {"binary_data_size": size * 2}}
    requests += [
        (member_url, *_binary_body({"inputs": [wrong]}), 400),
        (member_url, *_binary_body({"inputs": [int64]}, bytes(size * 2)), 400),
        (member_url, *_binary_body({"inputs": [{**int64, "datatype": "FP32"}]}, bytes(size)), 400),
        (f"/v2/models/{spec_name}/infer", b"{not json", {}, 400),
        (f"/v2/models/{spec_name}/infer", b"{}", {HEADER: "99"}, 400),
        (f"/v2/models/{spec_name}/infer", b"{}", {HEADER: "x"}, 400),
        (f"/v2/models/{spec_name}/versions/7/infer", b"{}", {}, 404),
        ("/v2/models/no-such-model/infer", b"{}", {}, 404),
    ]
    return requests


def test_bad_inputs_are_4xx_with_an_error(base_url, repository) -> None:
    spec, members = repository
    for url, body, headers, status in _bad_requests(spec.name, members[0]):
        response = httpx.post(base_url + url, content=body, headers=headers)
        assert response.status_code == status, (url, body[:200], response.text)
        assert list(response.json()) == ["error"] and response.json()["error"], response.text
    for url in ("/v2/models/no-such-model", "/v2/models/no-such-model/config", "/v2/nothing-here"):
        response = httpx.get(base_url + url)
        assert response.status_code == 404 and list(response.json()) == ["error"]
    assert httpx.get(f"{base_url}/v1/models/nothing").json()["error"] == "not_found"  # /v1 keeps its shape


def test_tritonclient_sees_the_error(client, repository) -> None:
    spec, _ = repository
    tensor = tritonclient_http.InferInput("image", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(spec.name, [tensor])
    assert raised.value.status() == "400" and "BYTES" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model")
    assert raised.value.status() == "404"


def test_v2_requests_are_counted_in_metrics_and_statistics(client, base_url, repository, images) -> None:
    spec, members = repository
    client.infer(spec.name, [bytes_input(images[:2])])
    text = httpx.get(f"{base_url}/metrics").text
    assert metric(text, "productrec_http_requests_total", endpoint="/v2/models/{model_name}/infer", method="POST", status="200") >= 1
    assert metric(text, "productrec_http_errors_total", endpoint="/v2/models/{model_name}/infer", status="400", error="bad_request") >= 0
    stats = client.get_inference_statistics(spec.name)["model_stats"][0]
    assert stats["name"] == spec.name and stats["inference_count"] >= 2
    assert stats["inference_stats"]["success"]["count"] >= 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in everything] == [spec.name, *(member.manifest.name for member in members)]


def test_not_ready_is_503_in_the_v2_shape(tmp_path) -> None:
    with serving(tmp_path / "empty") as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        response = client.get("/v2/health/ready")
        assert response.status_code == 503 and "not loaded" in response.json()["error"]
        assert client.get("/v2/models/anything").status_code == 503


def test_api_key_guards_v2_models_but_not_probes(trained_repository) -> None:
    with serving(trained_repository, api_key="secret") as client:
        assert client.get("/v2/health/ready").status_code == 200 and client.get("/v2").status_code == 200
        assert client.get("/v2/models/stats").status_code == 401
        assert client.get("/v2/models/stats", headers={"X-API-Key": "secret"}).status_code == 200
