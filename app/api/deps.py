"""FastAPI dependencies: settings, metrics, the ready service and the API key check.

All ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, a thread
hand-off per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.api.errors import ApiError
from app.core.config import Settings
from app.engine.metrics import ServingMetrics
from app.engine.pipeline import Pipeline


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_pipeline(request: Request) -> Pipeline:
    """The loaded pipeline, or 503 with the reason the service is not ready."""
    pipeline = request.app.state.pipeline
    if pipeline is None:
        reason = request.app.state.load_error or "the model repository is still loading"
        raise ApiError(503, "not_ready", reason, {"Retry-After": str(request.app.state.settings.retry_after_s)})
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]

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
