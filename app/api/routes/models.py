"""GET /v1/models: what is being served."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends

from app.api.deps import PipelineDep, SettingsDep, verify_api_key
from app.api.schemas import ErrorResponse, MemberInfo, ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(verify_api_key)])


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="The ensemble and its members",
    description="Members with versions, input sizes, TTA sizes and the onnxruntime providers really in use; labels.",
    responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse, "description": "Not ready."}},
)
async def models(pipeline: PipelineDep, settings: SettingsDep) -> ModelsResponse:
    ensemble = pipeline.ensemble
    members = []
    for member in ensemble.members:
        manifest = member.manifest
        members.append(
            MemberInfo(
                name=manifest.name,
                version=str(manifest.version),
                architecture=manifest.architecture,
                **dataclasses.asdict(manifest.preprocess),
                loss=manifest.loss.name,
                sha256=manifest.sha256,
                providers=member.providers,
            )
        )
    return ModelsResponse(
        ensemble=ensemble.spec.name,
        strategy=pipeline.strategy,
        num_classes=ensemble.num_classes,
        labels=list(ensemble.labels),
        default_top_k=min(settings.default_top_k, ensemble.num_classes),
        tta_default=settings.tta,
        members=members,
    )
