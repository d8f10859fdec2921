"""The v2 REST inference body: a JSON object, optionally followed by binary tensor data.

Triton's binary tensor data extension: ``Inference-Header-Content-Length`` gives the JSON's length,
each binary tensor states its ``binary_data_size`` and the tensors' bytes follow the JSON in the order
of the tensors. A header of 0 is a raw binary request: the whole body is the data of the model's only input.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from app.protocol.models import TensorSpec
from app.protocol.tensors import (
    InferRequest,
    InferResponse,
    Parameters,
    ProtocolError,
    RequestedOutput,
    Tensor,
    numpy_dtype,
    tensor_from_json,
    tensor_from_raw,
    tensor_to_json,
    tensor_to_raw,
)

INFERENCE_HEADER = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def _string(document: dict[str, Any], key: str, where: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{where} needs a string {key!r}")
    return value


def _parameters(document: dict[str, Any], where: str) -> Parameters:
    parameters = _object(document.get("parameters", {}), f"{where}'s parameters")
    for name, value in parameters.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ProtocolError(f"{where}: parameter {name!r} must be a string, number or boolean")
    return parameters


def _binary_size(parameters: Parameters, where: str) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _input(document: Any, position: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """The input at ``position`` and the offset of the next input's binary data."""
    where = f"input {position}"
    document = _object(document, where)
    name = _string(document, "name", where)
    datatype = _string(document, "datatype", f"input {name!r}")
    shape = document.get("shape")
    if not isinstance(shape, list):
        raise ProtocolError(f"input {name!r} needs a 'shape' list")
    parameters = _parameters(document, f"input {name!r}")
    if "shared_memory_region" in parameters:
        raise ProtocolError("the shared memory extension is not supported: send the data in the request")
    size = _binary_size(parameters, f"input {name!r}")
    if size is None:
        if "data" not in document:
            raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size")
        return tensor_from_json(name, datatype, shape, document["data"], parameters), offset
    if "data" in document:
        raise ProtocolError(f"input {name!r} has both 'data' and a binary_data_size")
    if offset + size > len(binary):
        raise ProtocolError(
            f"input {name!r}: binary_data_size {size} runs past the {len(binary) - offset} bytes of binary data left"
        )
    return tensor_from_raw(name, datatype, shape, binary[offset : offset + size], parameters), offset + size


def _outputs(document: dict[str, Any]) -> list[RequestedOutput] | None:
    if "outputs" not in document:
        return None
    outputs = document["outputs"]
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    requested = []
    for position, output in enumerate(outputs):
        output = _object(output, f"output {position}")
        name = _string(output, "name", f"output {position}")
        requested.append(RequestedOutput(name, _parameters(output, f"output {name!r}")))
    return requested


def _raw_request(body: bytes, inputs: Sequence[TensorSpec]) -> InferRequest:
    """A raw binary request: the body is the only input's data (one BYTES element, or a batch of rows);
    every output comes back as binary data, as the extension says."""
    if len(inputs) != 1:
        raise ProtocolError("a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input")
    (spec,) = inputs
    if spec.datatype == "BYTES":
        tensor = tensor_from_raw(spec.name, "BYTES", [1], len(body).to_bytes(4, "little") + body)
    else:
        row = math.prod(spec.shape[1:]) * numpy_dtype(spec.datatype).itemsize
        if not row or len(body) % row:
            raise ProtocolError(f"a raw body of {len(body)} bytes is not a whole number of {list(spec.shape[1:])} rows")
        tensor = tensor_from_raw(spec.name, spec.datatype, [len(body) // row, *spec.shape[1:]], body)
    return InferRequest([tensor], parameters={"binary_data_output": True})


def parse_infer_request(body: bytes, header_length: str | None, inputs: Sequence[TensorSpec]) -> InferRequest:
    """The request in ``body``; ``header_length`` is the Inference-Header-Content-Length header, if sent."""
    json_length = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{INFERENCE_HEADER} {header_length!r} is not a length within the {len(body)}-byte body")
        json_length = int(header_length)
        if json_length == 0:
            return _raw_request(body, inputs)
    try:
        document = _object(json.loads(body[:json_length]), "the inference request")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the inference request is not valid JSON: {exc}") from None
    documents = document.get("inputs")
    if not isinstance(documents, list) or not documents:
        raise ProtocolError("the inference request needs a non-empty 'inputs' list")
    binary, offset, tensors = memoryview(body)[json_length:], 0, []
    for position, item in enumerate(documents):
        tensor, offset = _input(item, position, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size total")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    return InferRequest(tensors, _outputs(document), request_id, _parameters(document, "the inference request"))


def _wants_binary(request: InferRequest, name: str) -> bool:
    default = request.parameters.get("binary_data_output") is True
    for output in request.outputs or []:
        if output.name == name and "binary_data" in output.parameters:
            return output.parameters["binary_data"] is True
    return default


def encode_infer_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body and, when binary tensor data follows the JSON, the JSON's length."""
    outputs, chunks = [], []
    for tensor in response.outputs:
        output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if _wants_binary(request, tensor.name):
            raw = tensor_to_raw(tensor)
            output["parameters"] = {**tensor.parameters, "binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if tensor.parameters:
                output["parameters"] = tensor.parameters
            output["data"] = tensor_to_json(tensor)
        outputs.append(output)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
