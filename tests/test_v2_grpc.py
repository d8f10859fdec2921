"""The KServe v2 gRPC API driven by the real tritonclient.grpc against `productrec serve --grpc-port`.

The server runs in a subprocess: its generated protobuf modules and tritonclient's both define the
``inference`` package, which one process's default descriptor pool cannot hold twice.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from serving_helpers import productrec_serve
from v2_helpers import SERVE_OPTIONS, assert_classification_matches, member_crops, onnx_logits, v1_labels

grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.contract.manifest import read_repository  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_repository, tmp_path_factory):
    port = free_port()
    options = [*SERVE_OPTIONS, "--grpc-port", str(port)]
    with productrec_serve(trained_repository, tmp_path_factory.mktemp("v2grpc"), options) as base:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        yield base, client
        client.close()


@pytest.fixture(scope="module")
def repository(trained_repository):
    return read_repository(trained_repository)


@pytest.fixture(scope="module")
def images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images[::9][:4]


def test_live_ready_and_metadata(served, repository) -> None:
    _, client = served
    spec, members = repository
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(spec.name)
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata(spec.name)
    assert metadata.name == spec.name and [i.name for i in metadata.inputs] == ["image"]
    assert list(metadata.outputs[0].shape) == [-1, members[0].manifest.num_classes]
    manifest = members[0].manifest
    member = client.get_model_metadata(manifest.name, str(manifest.version))
    size = manifest.preprocess.input_size
    assert list(member.inputs[0].shape) == [-1, manifest.preprocess.in_chans, size, size]
    assert member.inputs[0].datatype == "FP32" and member.versions == [str(manifest.version)]


def test_infer_ensemble_with_classification_equals_v1(served, repository, images) -> None:
    base, client = served
    spec, _ = repository
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(spec.name, [tensor], outputs=outputs, request_id="g-1")
    assert result.get_response().id == "g-1"
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(images), 3)
    for row, data in zip(classes, images):
        assert_classification_matches(row, v1_labels(base, data))
    probabilities = client.infer(spec.name, [tensor], parameters={"tta": False}).as_numpy("probabilities")
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_infer_member_logits_equal_onnxruntime(served, repository, images) -> None:
    _, client = served
    _, members = repository
    member = members[-1]
    crops = member_crops(member.manifest, images)
    tensor = grpcclient.InferInput(member.manifest.input_name, list(crops.shape), "FP32")
    tensor.set_data_from_numpy(crops)
    logits = client.infer(member.manifest.name, [tensor]).as_numpy(member.manifest.output_name)
    np.testing.assert_allclose(logits, onnx_logits(member, crops), atol=1e-4)


def test_bad_input_and_unknown_model_are_client_errors(served, repository) -> None:
    _, client = served
    spec, _ = repository
    tensor = grpcclient.InferInput("image", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(spec.name, [tensor])
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    not_an_image = grpcclient.InferInput("image", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(spec.name, [not_an_image])
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model")
    assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)
