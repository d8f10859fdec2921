"""POST /v1/predict and /v1/predict/batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import FormData

from app.api.client_limit import client_slot
from app.api.deps import PipelineDep, SettingsDep
from app.api.errors import ApiError, api_error_for, record_error
from app.api.options import OPTION_TYPES, option_value
from app.api.uploads import read_batch_images, read_single_image
from app.core.config import Settings
from app.api.schemas import BatchItem, BatchPrediction, ErrorResponse, Prediction
from app.engine.pipeline import ImageResult, Pipeline

# Behind the API key when one is set: create_app adds the check (and its 401) to the spec only then; the
# per-client limit runs after it, so a request with a wrong key never takes a client's slot.
router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(client_slot)])

TopKQuery = Annotated[
    int | None,
    Query(
        ge=1,
        description="Labels to return, 1..number of classes (default: PRODUCTREC_DEFAULT_TOP_K). "
        "Also accepted as a multipart field.",
        examples=[5],
    ),
]
AverageKQuery = Annotated[
    int | None,
    Query(
        ge=1,
        description="Return the average-k label set instead of the top-k labels: the labels above the probability "
        "threshold fitted on validation so that sets hold k labels on average (k from 1 to the largest k every "
        "member has a threshold for, usually 5). Not together with top_k. Also accepted as a multipart field.",
        examples=[3],
    ),
]
TtaQuery = Annotated[
    bool | None,
    Query(description="Multi-crop TTA on or off (default: PRODUCTREC_TTA). Also accepted as a multipart field."),
]



@dataclass(frozen=True)
class QueryOptions:
    """The options given in the query (None: not given there)."""

    top_k: int | None
    tta: bool | None
    average_k: int | None


def query_options(top_k: TopKQuery = None, tta: TtaQuery = None, average_k: AverageKQuery = None) -> QueryOptions:
    return QueryOptions(top_k, tta, average_k)


QueryOptionsDep = Annotated[QueryOptions, Depends(query_options)]

_IMAGE_SCHEMA = {"type": "string", "format": "binary", "minLength": 1}
# A batch answers an empty file with that item's own 400, so its files may be empty.
_BATCH_FILE_SCHEMA = {"type": "string", "format": "binary"}
_OPTION_FIELDS = {
    "top_k": {"type": "integer", "minimum": 1},
    "tta": {"type": "boolean"},
    "average_k": {"type": "integer", "minimum": 1},
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image (JPEG, PNG, WebP, GIF, BMP, TIFF): a multipart 'file' field, or the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {**_IMAGE_SCHEMA, "description": "The image."}, **_OPTION_FIELDS},
                }
            },
            "image/*": {"schema": _IMAGE_SCHEMA},
            "application/octet-stream": {"schema": _IMAGE_SCHEMA},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Up to PRODUCTREC_MAX_BATCH_ITEMS images as repeated multipart 'files' fields.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": _BATCH_FILE_SCHEMA, "minItems": 1},
                        **_OPTION_FIELDS,
                    },
                }
            }
        },
    }
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed request (empty file, broken multipart body)."),
    413: _error("Upload over max_upload_bytes / max_request_bytes, image over max_image_pixels, or too many files."),
    415: _error("Not an image Pillow can decode, or a content type other than multipart or image/*."),
    422: _error(
        "Invalid parameter (top_k out of 1..classes, average_k beyond the fitted thresholds or given with top_k), "
        "missing field, or an image too costly to decode."
    ),
    429: _error("This client has max_requests_per_client requests in flight already (Retry-After)."),
    503: _error("Not ready (the reason is in detail), or the queue is full (Retry-After)."),
}


def _options(
    pipeline: Pipeline, settings: Settings, query: QueryOptions, form: FormData | None
) -> tuple[int, bool, int | None]:
    """top_k, tta and average_k from the query, else the multipart fields, else the settings."""
    values: dict[str, Any] = {"top_k": query.top_k, "tta": query.tta, "average_k": query.average_k}
    for name in OPTION_TYPES:
        if values[name] is None and form is not None and name in form:
            values[name] = option_value(name, form[name])
    num_classes = pipeline.ensemble.num_classes
    resolved_top_k = values["top_k"] if values["top_k"] is not None else min(settings.default_top_k, num_classes)
    if not 1 <= resolved_top_k <= num_classes:
        raise ApiError(422, "invalid_request", f"top_k must be between 1 and {num_classes}, got {resolved_top_k}")
    return resolved_top_k, settings.tta if values["tta"] is None else values["tta"], _average_k(pipeline, values)


def _average_k(pipeline: Pipeline, values: dict[str, Any]) -> int | None:
    """The requested average set size, checked against the thresholds the members carry."""
    average_k = values["average_k"]
    if average_k is None:
        return None
    if values["top_k"] is not None:
        raise ApiError(422, "invalid_request", "give top_k or average_k, not both")
    available = pipeline.ensemble.max_average_k
    if available == 0:
        raise ApiError(422, "invalid_request", "average_k needs calibrated members; re-export them with this productrec")
    if not 1 <= average_k <= available:
        raise ApiError(422, "invalid_request", f"average_k must be between 1 and {available}, got {average_k}")
    return average_k


@router.post(
    "/predict",
    response_model=Prediction,
    summary="Recognise the product in one image",
    description="Top-k labels of the ensemble (top-1 voting across members, multi-crop TTA) or its average-k "
    "label set, each member's top-1 with its version, and timings.",
    responses=COMMON_ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict(
    request: Request, pipeline: PipelineDep, settings: SettingsDep, query: QueryOptionsDep
) -> ImageResult:
    upload, form = await read_single_image(request, settings)
    resolved_top_k, resolved_tta, resolved_average_k = _options(pipeline, settings, query, form)
    (outcome,) = await pipeline.predict([upload.data], resolved_top_k, resolved_tta, resolved_average_k)
    if isinstance(outcome, BaseException):
        raise api_error_for(outcome, settings.retry_after_s)
    return outcome


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    summary="Recognise the products in many images",
    description="One result per file, in order: its prediction, or its own error (status and JSON error). "
    "A bad file never fails the others; the whole request fails only when it is malformed or over a limit.",
    responses=COMMON_ERRORS,
    openapi_extra=BATCH_BODY,
)
async def predict_batch(
    request: Request, pipeline: PipelineDep, settings: SettingsDep, query: QueryOptionsDep
) -> BatchPrediction:
    uploads, form = await read_batch_images(request, settings)
    resolved_top_k, resolved_tta, resolved_average_k = _options(pipeline, settings, query, form)
    readable = [upload.data for upload in uploads if upload.error is None]
    outcomes = iter(await pipeline.predict(readable, resolved_top_k, resolved_tta, resolved_average_k) if readable else [])
    items = []
    for index, upload in enumerate(uploads):
        outcome = upload.error or next(outcomes)
        if isinstance(outcome, BaseException):
            error = api_error_for(outcome, settings.retry_after_s)
            record_error(request, error)
            items.append(
                BatchItem(
                    index=index, filename=upload.filename, status=error.status, error=ErrorResponse(**error.body())
                )
            )
        else:
            items.append(BatchItem(index=index, filename=upload.filename, status=200, prediction=outcome))
    succeeded = sum(item.prediction is not None for item in items)
    return BatchPrediction(results=items, succeeded=succeeded, failed=len(items) - succeeded)
