"""GET /v1/models: what is being served."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from app.api.deps import PipelineDep, SettingsDep
from app.api.schemas import ErrorResponse, MemberInfo, ModelsResponse

# Behind the API key when one is set: create_app adds the check (and its 401) to the spec only then.
router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="The ensemble and its members",
    description="Members with versions, input sizes, TTA sizes and the onnxruntime providers really in use; labels.",
    responses={503: {"model": ErrorResponse, "description": "Not ready."}},
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
