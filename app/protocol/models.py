"""The served pipeline as v2 models: the ensemble, and each member under its own name and version.

Built per request from the current pipeline (``find_model``), never cached, so a pipeline swapped in
by a reload is what the next request sees. Metadata and Triton's model configuration are derived from
the manifests; inference goes through the pipeline (decode workers, dynamic batcher, limits, metrics).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from app.contract.errors import DomainError
from app.contract.manifest import ENSEMBLE_VERSION
from app.contract.ranking import top_indices
from app.engine.pipeline import ImageResult, Pipeline
from app.protocol.stats import Statistics
from app.protocol.tensors import (
    InferRequest,
    InferResponse,
    InferTimings,
    Parameters,
    ProtocolError,
    RequestedOutput,
    Tensor,
)

SERVER_NAME = "productrec"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics")
IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
ENSEMBLE_PLATFORM = "ensemble"
MEMBER_PLATFORM = "onnxruntime_onnx"
_CONFIG_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


class TooManyItemsError(ProtocolError):
    status, code = 413, "too_many_items"


class PayloadTooLargeError(ProtocolError):
    status, code = 413, "payload_too_large"


class ModelNotFoundError(DomainError):
    """No model (or no such version of it) is being served."""

    status, code = 404, "model_not_found"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class V2Model(Protocol):
    """What every front end needs of a model."""

    name: str
    version: str
    metadata: ModelMetadata

    def config(self) -> dict[str, Any]: ...

    async def infer(self, request: InferRequest) -> InferResponse: ...


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def served_models(pipeline: Pipeline) -> list[V2Model]:
    """The ensemble first, then its members."""
    return [EnsembleModel(pipeline), *(MemberModel(pipeline, index) for index in range(len(pipeline.ensemble.members)))]


def find_model(pipeline: Pipeline, name: str, version: str | None = None) -> V2Model:
    """The model called ``name`` (at ``version`` when given); ``ModelNotFoundError`` otherwise."""
    for model in served_models(pipeline):
        if model.name == name:
            if version and version != model.version:
                raise ModelNotFoundError(f"model {name!r} has no version {version!r}; serving version {model.version!r}")
            return model
    known = ", ".join(model.name for model in served_models(pipeline))
    raise ModelNotFoundError(f"unknown model {name!r}; serving {known}")


async def run_inference(model: V2Model, request: InferRequest, statistics: Statistics) -> InferResponse:
    """``model.infer`` with its outcome and durations recorded for the statistics extension."""
    started = time.perf_counter()
    try:
        response = await model.infer(request)
    except BaseException:
        statistics.failure(model.name, model.version, time.perf_counter() - started)
        raise
    batch = response.outputs[0].shape[0] if response.outputs and response.outputs[0].shape else 1
    statistics.success(model.name, model.version, batch, time.perf_counter() - started, response.timings)
    response.id = request.id
    return response


def _config_tensor(spec: TensorSpec, dims: Sequence[int], **extra: Any) -> dict[str, Any]:
    return {"name": spec.name, "data_type": _CONFIG_TYPES[spec.datatype], "dims": list(dims), **extra}


def _triton_config(
    metadata: ModelMetadata, max_batch_size: int, input_dims: Sequence[int], **input_extra: Any
) -> dict[str, Any]:
    """The subset of Triton's model configuration JSON that clients read (image_client.py among them):
    dims without the batch dimension, as Triton's are when ``max_batch_size`` > 0."""
    (inputs,), (outputs,) = metadata.inputs, metadata.outputs
    return {
        "name": metadata.name,
        "platform": metadata.platform,
        "max_batch_size": max_batch_size,
        "input": [_config_tensor(inputs, input_dims, **input_extra)],
        "output": [_config_tensor(outputs, outputs.shape[1:])],
    }


def _single_input(request: InferRequest, spec: TensorSpec, model: str) -> Tensor:
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = [tensor.name for tensor in request.inputs]
        raise ProtocolError(f"model {model!r} takes one input {spec.name!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input {spec.name!r} of model {model!r} is {spec.datatype}, got {tensor.datatype}")
    return tensor


def _int_parameter(parameters: Parameters, name: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError(f"parameter {name!r} must be a positive integer, got {value!r}")
    return value


def _bool_parameter(parameters: Parameters, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {name!r} must be a boolean, got {value!r}")
    return value


def _requested(request: InferRequest, specs: list[TensorSpec], model: str) -> list[tuple[TensorSpec, int | None]]:
    """Each requested output's spec and classification count (the output's ``classification``,
    else the request's ``top_k``, else none: the tensor itself)."""
    outputs = request.outputs if request.outputs is not None else [RequestedOutput(spec.name) for spec in specs]
    by_name = {spec.name: spec for spec in specs}
    top_k = _int_parameter(request.parameters, "top_k")
    requested = []
    for output in outputs:
        if output.name not in by_name:
            raise ProtocolError(f"model {model!r} has no output {output.name!r}; outputs: {list(by_name)}")
        if "shared_memory_region" in output.parameters:
            raise ProtocolError("the shared memory extension is not supported: ask for the output itself")
        count = _int_parameter(output.parameters, "classification")
        requested.append((by_name[output.name], count if count is not None else top_k))
    return requested


def _strings(rows: list[list[tuple[float, int, str]]]) -> Tensor:
    """Classification strings ``"score:index:label"``, one row per batch item."""
    data = np.array(
        [[f"{np.float32(score)}:{index}:{label}".encode() for score, index, label in row] for row in rows], dtype=object
    )
    return Tensor("", "BYTES", data.shape, data)


class EnsembleModel:
    """The ensemble: encoded images in, the members' mean probabilities (or its own ranked labels) out."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        ensemble = pipeline.ensemble
        self.name = ensemble.spec.name
        self.version = ENSEMBLE_VERSION
        self.metadata = ModelMetadata(
            self.name,
            [self.version],
            ENSEMBLE_PLATFORM,
            [TensorSpec(IMAGE_INPUT, "BYTES", (-1,))],
            [TensorSpec(PROBABILITIES_OUTPUT, "FP32", (-1, ensemble.num_classes))],
        )

    def config(self) -> dict[str, Any]:
        # Triton's spelling of "one encoded image per batch item": dims [1] reshaped to a scalar.
        max_batch_size = self.pipeline.settings.max_batch_items
        return _triton_config(self.metadata, max_batch_size, [1], format="FORMAT_NONE", reshape={"shape": []})

    def _images(self, request: InferRequest) -> list[bytes]:
        tensor = _single_input(request, self.metadata.inputs[0], self.name)
        settings = self.pipeline.settings
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,)):
            raise ProtocolError(f"input {IMAGE_INPUT!r} has shape [-1] (or [-1, 1]), got {list(tensor.shape)}")
        images = list(tensor.data.reshape(-1))
        if not images:
            raise ProtocolError(f"input {IMAGE_INPUT!r} holds no image")
        if len(images) > settings.max_batch_items:
            raise TooManyItemsError(
                f"{len(images)} images in one request; at most {settings.max_batch_items} (PRODUCTREC_MAX_BATCH_ITEMS)"
            )
        for position, image in enumerate(images):
            if not image:
                raise ProtocolError(f"image {position} is empty")
            if len(image) > settings.max_upload_bytes:
                raise PayloadTooLargeError(
                    f"image {position} is {len(image)} bytes; the limit is {settings.max_upload_bytes}"
                )
        return images

    async def infer(self, request: InferRequest) -> InferResponse:
        images = self._images(request)
        requested = _requested(request, self.metadata.outputs, self.name)
        tta = _bool_parameter(request.parameters, "tta", self.pipeline.settings.tta)
        num_classes = self.pipeline.ensemble.num_classes
        top_k = min(max([count for _, count in requested if count] or [1]), num_classes)
        outcomes = await self.pipeline.predict(images, top_k, tta)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        results: list[ImageResult] = outcomes  # type: ignore[assignment]
        outputs = []
        for spec, count in requested:
            if count:
                rows = [[(label.score, label.index, label.label) for label in result.labels[:count]] for result in results]
                tensor = _strings(rows)
            else:
                data = np.stack([result.probabilities for result in results]).astype(np.float32, copy=False)
                tensor = Tensor("", spec.datatype, data.shape, data)
            tensor.name = spec.name
            outputs.append(tensor)
        timings = InferTimings(
            queue_s=max(result.timings.queue_ms for result in results) / 1000,
            compute_input_s=max(result.timings.decode_ms for result in results) / 1000,
            compute_infer_s=max(result.timings.inference_ms for result in results) / 1000,
        )
        # The members and strategy that answered: a reload swaps the ensemble between requests, never within one.
        served = {"tta": tta, "strategy": results[0].strategy, "members": _members_text(results[0])}
        return InferResponse(self.name, self.version, outputs, parameters=served, timings=timings)


def _members_text(result: ImageResult) -> str:
    """``name:version`` of each member that answered, comma-separated."""
    return ",".join(f"{member.name}:{member.version}" for member in result.members)


class MemberModel:
    """One member: preprocessed ``[N, C, H, W]`` FP32 crops in, its logits out."""

    def __init__(self, pipeline: Pipeline, index: int) -> None:
        self.pipeline = pipeline
        self.index = index
        manifest = pipeline.ensemble.members[index].manifest
        self.name = manifest.name
        self.version = str(manifest.version)
        self.labels = manifest.labels
        size = manifest.preprocess.input_size
        self.metadata = ModelMetadata(
            self.name,
            [self.version],
            MEMBER_PLATFORM,
            [TensorSpec(manifest.input_name, "FP32", (-1, manifest.preprocess.in_chans, size, size))],
            [TensorSpec(manifest.output_name, "FP32", (-1, manifest.num_classes))],
        )

    def config(self) -> dict[str, Any]:
        dims = self.metadata.inputs[0].shape[1:]
        return _triton_config(self.metadata, self.pipeline.settings.max_batch_items, dims, format="FORMAT_NCHW")

    def _crops(self, request: InferRequest) -> np.ndarray:
        spec = self.metadata.inputs[0]
        tensor = _single_input(request, spec, self.name)
        if len(tensor.shape) != 4 or tensor.shape[1:] != spec.shape[1:] or tensor.shape[0] < 1:
            raise ProtocolError(f"input {spec.name!r} of model {self.name!r} has shape {list(spec.shape)}, got {list(tensor.shape)}")
        limit = self.pipeline.settings.max_batch_items
        if tensor.shape[0] > limit:
            raise TooManyItemsError(f"{tensor.shape[0]} rows in one request; at most {limit} (PRODUCTREC_MAX_BATCH_ITEMS)")
        if not np.isfinite(tensor.data).all():
            raise ProtocolError(f"input {spec.name!r} holds NaN or infinite values")
        return np.ascontiguousarray(tensor.data, dtype=np.float32)

    async def infer(self, request: InferRequest) -> InferResponse:
        crops = self._crops(request)
        requested = _requested(request, self.metadata.outputs, self.name)
        run = await self.pipeline.member_logits(self.index, crops)
        outputs = []
        for spec, count in requested:
            if count:
                order = top_indices(run.logits, count)
                rows = [[(row[i], int(i), self.labels[int(i)]) for i in top] for row, top in zip(run.logits, order)]
                tensor = _strings(rows)
            else:
                tensor = Tensor("", spec.datatype, run.logits.shape, run.logits.astype(np.float32, copy=False))
            tensor.name = spec.name
            outputs.append(tensor)
        return InferResponse(self.name, self.version, outputs, timings=InferTimings(run.queue_s, 0.0, run.run_s))
