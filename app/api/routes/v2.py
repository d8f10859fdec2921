"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's binary data, classification,
model configuration and statistics extensions. Thin: the protocol lives in ``app.protocol``.

Errors under /v2 are ``{"error": text}`` with a 4xx/5xx status (``app.api.errors``). Server metadata
and the health probes are open; everything under /v2/models needs the API key when one is configured.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.api.deps import PipelineDep, SettingsDep
from app.api.errors import ApiError
from app.api.schemas import V2ErrorResponse
from app.api.uploads import read_body
from app.protocol.models import find_model, run_inference, served_models, server_metadata
from app.protocol.rest import BINARY_TYPE, INFERENCE_HEADER, JSON_TYPE, encode_infer_response, parse_infer_request
from app.protocol.stats import Statistics

def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2ErrorResponse, "description": V2_ERROR_CAUSES[status]} for status in statuses}


V2_ERROR_CAUSES = {
    400: "A malformed request: tensors, datatypes, shapes, binary sizes or parameters.",
    404: "No such model or version is served.",
    413: "The request body or an image is over its limit, or too many images.",
    415: "An image cannot be decoded, or the body's encoding is not supported.",
    422: "An image is too complex or too slow to decode.",
    429: "This client has its limit of requests in flight.",
    503: "Not ready, or the queue is full (Retry-After).",
}
router = APIRouter(prefix="/v2", tags=["v2"], responses=_errors(503))
# Behind the API key when one is set (create_app).
models_router = APIRouter(prefix="/v2/models", tags=["v2"], responses=_errors(400, 404, 503))

MODEL = "/{model_name}"
VERSION = "/{model_name}/versions/{model_version}"


async def get_statistics(request: Request) -> Statistics:
    return request.app.state.v2_statistics


StatisticsDep = Annotated[Statistics, Depends(get_statistics)]


@router.get("", summary="Server metadata: name, version and protocol extensions")
async def metadata() -> dict[str, Any]:
    return server_metadata()


@router.get("/health/live", summary="Liveness (v2)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness (v2): every model loaded")
async def ready(pipeline: PipelineDep) -> dict[str, bool]:
    return {"ready": True}


@models_router.get("/stats", summary="Statistics of every model (Triton's statistics extension)")
async def all_statistics(pipeline: PipelineDep, statistics: StatisticsDep) -> dict[str, Any]:
    return statistics.report((model.name, model.version) for model in served_models(pipeline))


@models_router.get(MODEL, summary="Model metadata: versions, platform, input and output tensors")
@models_router.get(VERSION, summary="Model metadata of one version")
async def model_metadata(pipeline: PipelineDep, model_name: str, model_version: str | None = None) -> dict[str, Any]:
    return find_model(pipeline, model_name, model_version).metadata.to_json()


@models_router.get(MODEL + "/ready", summary="Model readiness")
@models_router.get(VERSION + "/ready", summary="Model readiness of one version")
async def model_ready(pipeline: PipelineDep, model_name: str, model_version: str | None = None) -> dict[str, Any]:
    return {"name": find_model(pipeline, model_name, model_version).name, "ready": True}


@models_router.get(MODEL + "/config", summary="Model configuration (Triton's JSON subset)")
@models_router.get(VERSION + "/config", summary="Model configuration of one version")
async def model_config(pipeline: PipelineDep, model_name: str, model_version: str | None = None) -> dict[str, Any]:
    return find_model(pipeline, model_name, model_version).config()


@models_router.get(MODEL + "/stats", summary="Model statistics (Triton's statistics extension)")
@models_router.get(VERSION + "/stats", summary="Model statistics of one version")
async def model_statistics(
    pipeline: PipelineDep, statistics: StatisticsDep, model_name: str, model_version: str | None = None
) -> dict[str, Any]:
    model = find_model(pipeline, model_name, model_version)
    return statistics.report([(model.name, model.version)])


@models_router.post(
    MODEL + "/infer",
    summary="Inference",
    description="A JSON inference request, optionally followed by binary tensor data "
    f"({INFERENCE_HEADER} gives the JSON's length). The ensemble takes encoded images (BYTES) and returns "
    "`probabilities`, or its ranked labels with `parameters.classification`; members take preprocessed FP32 crops.",
    responses=_errors(413, 415, 422, 429),
)
@models_router.post(VERSION + "/infer", summary="Inference on one version", responses=_errors(413, 415, 422, 429))
async def infer(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    statistics: StatisticsDep,
    model_name: str,
    model_version: str | None = None,
) -> Response:
    model = find_model(pipeline, model_name, model_version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; send identity")
    body = await read_body(request, settings.max_request_bytes, "the request body")
    inference = parse_infer_request(body, request.headers.get(INFERENCE_HEADER), model.metadata.inputs)
    response = await run_inference(model, inference, statistics)
    content, header_length = encode_infer_response(response, inference)
    if header_length is None:
        return Response(content, media_type=JSON_TYPE)
    return Response(content, media_type=BINARY_TYPE, headers={INFERENCE_HEADER: str(header_length)})
