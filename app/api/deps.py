"""FastAPI dependencies: settings, metrics, the ready service and the API key check.

All ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, a thread
hand-off per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader

from app.api.errors import ApiError
from app.core.config import Settings
from app.engine.metrics import ServingMetrics
from app.engine.pipeline import Pipeline
from app.engine.repository import ModelRepository


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


def current_pipeline(app: FastAPI) -> Pipeline | None:
    """The pipeline serving now (a reload swaps it; a request keeps the one it started with)."""
    return app.state.models.pipeline


async def get_pipeline(request: Request) -> Pipeline:
    """The loaded pipeline, or 503 with the reason the service is not ready."""
    pipeline = current_pipeline(request.app)
    if pipeline is None:
        reason = request.app.state.models.unavailable_reason
        raise ApiError(503, "not_ready", reason, {"Retry-After": str(request.app.state.settings.retry_after_s)})
    return pipeline


async def get_models(request: Request) -> ModelRepository:
    return request.app.state.models


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
ModelsDep = Annotated[ModelRepository, Depends(get_models)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The value of the service's PRODUCTREC_API_KEY."
)


async def verify_api_key(settings: SettingsDep, api_key: Annotated[str | None, Security(api_key_header)]) -> None:
    """401 unless the X-API-Key header matches the configured key (when one is configured)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if api_key is None or not hmac.compare_digest(api_key.encode(), expected):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


management_key_header = APIKeyHeader(
    name="X-Management-Key", auto_error=False, description="The value of the service's PRODUCTREC_MANAGEMENT_API_KEY."
)


async def verify_management_key(
    settings: SettingsDep, key: Annotated[str | None, Security(management_key_header)]
) -> None:
    """401 unless the X-Management-Key header matches the configured management key (when one is configured)."""
    if settings.management_api_key is None:
        return
    expected = settings.management_api_key.get_secret_value().encode()
    if key is None or not hmac.compare_digest(key.encode(), expected):
        raise ApiError(401, "unauthorized", "missing or wrong X-Management-Key header")
