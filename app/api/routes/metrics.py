"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.api.deps import MetricsDep
from app.engine.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    description="Requests and errors by endpoint and status, latency histograms, dynamic batch sizes, "
    "per-member inference time, queue depth.",
)
async def metrics(request: Request, metrics: MetricsDep) -> PlainTextResponse:
    service = request.app.state.service
    metrics.ready.set(1 if service is not None else 0)
    metrics.queue_depth.set(service.queue_depth if service is not None else 0)
    metrics.in_flight.set(service.in_flight if service is not None else 0)
    return PlainTextResponse(metrics.registry.exposition(), media_type=CONTENT_TYPE)
