"""v2 tensors: datatypes, raw and JSON tensor data, and the transport-free request and response.

Raw data is the binary tensor data extension's (and gRPC's ``raw_*_contents``) layout: row-major,
little-endian, no padding; a BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from app.contract.errors import DomainError

Parameters = dict[str, Any]

# The protocol's datatypes (BF16 has no NumPy type and is refused).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_LENGTH = struct.Struct("<I")


class ProtocolError(DomainError, ValueError):
    """A request that breaks the protocol or does not fit the model (wrong name, datatype, shape, size)."""

    status, code = 400, "bad_request"


@dataclass
class Tensor:
    """A named tensor: ``data`` has ``shape``; BYTES data is an object array of ``bytes``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InferRequest:
    """An inference request, whatever transport brought it."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output, with default settings
    id: str = ""
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InferTimings:
    """Where a request's time went, for the statistics extension (seconds)."""

    queue_s: float = 0.0
    compute_input_s: float = 0.0
    compute_infer_s: float = 0.0


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    timings: InferTimings = field(default_factory=InferTimings)


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy type of a v2 datatype; ``ProtocolError`` for an unknown or unsupported one."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(f"unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}") from None


def checked_shape(shape: Sequence[Any]) -> tuple[int, ...]:
    """A tensor's shape: non-negative integers (a request states its real shape, never -1)."""
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise ProtocolError(f"shape {list(shape)} must be a list of non-negative integers")
    return tuple(shape)


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES elements in the raw layout: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def deserialize_bytes(raw: bytes | memoryview, name: str) -> list[bytes]:
    """The elements of raw BYTES data; ``ProtocolError`` when a length runs past the end."""
    view = memoryview(raw)
    elements, offset = [], 0
    while offset < len(view):
        if offset + _LENGTH.size > len(view):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise ProtocolError(
                f"input {name!r}: a BYTES element of {length} bytes runs past the end of its {len(view)} bytes of data"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def _object_array(elements: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _check_count(name: str, shape: tuple[int, ...], count: int) -> None:
    if count != math.prod(shape):
        raise ProtocolError(f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} elements, the data {count}")


def tensor_from_raw(
    name: str, datatype: str, shape: Sequence[Any], raw: bytes | memoryview, parameters: Parameters | None = None
) -> Tensor:
    """A tensor from its raw bytes (binary tensor data extension, gRPC raw contents)."""
    dtype, checked = numpy_dtype(datatype), checked_shape(shape)
    if datatype == "BYTES":
        elements = deserialize_bytes(raw, name)
        _check_count(name, checked, len(elements))
        return Tensor(name, datatype, checked, _object_array(elements, checked), parameters or {})
    expected = math.prod(checked) * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(
            f"input {name!r}: {datatype} shape {list(checked)} needs {expected} bytes of data, got {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype).reshape(checked)
    return Tensor(name, datatype, checked, data, parameters or {})


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _json_bytes(element: Any, name: str, base64_encoded: bool) -> bytes:
    if not isinstance(element, str):
        raise ProtocolError(f"input {name!r}: BYTES elements in JSON must be strings, got {type(element).__name__}")
    if not base64_encoded:
        return element.encode()
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: an element is not valid base64: {exc}") from None


def tensor_from_values(
    name: str, datatype: str, shape: Sequence[Any], values: Sequence[Any], parameters: Parameters | None = None
) -> Tensor:
    """A tensor from its flattened elements (numbers, or ``bytes`` for BYTES)."""
    dtype, checked = numpy_dtype(datatype), checked_shape(shape)
    _check_count(name, checked, len(values))
    if datatype == "BYTES":
        return Tensor(name, datatype, checked, _object_array(values, checked), parameters or {})
    try:
        array = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: data is not {datatype}: {exc}") from None
    return Tensor(name, datatype, checked, array.reshape(checked), parameters or {})


def tensor_from_json(name: str, datatype: str, shape: Sequence[Any], data: Any, parameters: Parameters | None = None) -> Tensor:
    """A tensor from JSON ``data`` (nested or flat). BYTES elements are UTF-8 strings, or base64 with the
    input parameter ``content_type: "base64"`` (MLServer's convention), since JSON cannot carry raw bytes."""
    parameters = parameters or {}
    flat = _flatten(data)
    if datatype == "BYTES":
        encoded = parameters.get("content_type") == "base64"
        flat = [_json_bytes(element, name, encoded) for element in flat]
    elif not all(isinstance(element, (int, float, bool)) for element in flat):
        raise ProtocolError(f"input {name!r}: {datatype} data must be numbers")
    return tensor_from_values(name, datatype, shape, flat, parameters)


def tensor_to_raw(tensor: Tensor) -> bytes:
    """The raw bytes of a tensor (row-major, little-endian; BYTES length-prefixed)."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=numpy_dtype(tensor.datatype)).tobytes()


def tensor_to_json(tensor: Tensor) -> list[Any]:
    """The flattened JSON data of a tensor (BYTES elements as UTF-8 strings, as the protocol's examples)."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [element.decode("utf-8", errors="replace") for element in flat]
    return flat.tolist()
