"""Liveness and readiness probes (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PipelineDep
from app.api.schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: every ensemble member is loaded",
    responses={503: {"model": ErrorResponse, "description": "Not ready; detail names the missing or bad file."}},
)
async def readyz(pipeline: PipelineDep) -> Readiness:
    return Readiness(ready=True, members=len(pipeline.ensemble.members))
