"""The model repository extension of the v2 protocol (Triton's): the index, and loads and unloads.

Loads and unloads are taken in the explicit model control mode only; the index answers in every mode.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from app.api.deps import ModelsDep, SettingsDep
from app.api.schemas import ErrorResponse, RepositoryIndexItem, RepositoryIndexRequest
from app.engine.repository import ModelControlError, ModelNotFoundError, ModelRepository, ModelState

router = APIRouter(prefix="/v2/repository", tags=["repository"])

_ERRORS = {
    400: {"model": ErrorResponse, "description": "The load failed (the served ensemble stays), or the mode takes no loads."},
    404: {"model": ErrorResponse, "description": "No model of that name in the repository."},
}


@router.post(
    "/index",
    response_model=list[RepositoryIndexItem],
    summary="Every model of the repository with its state",
    description="The ensemble and each version of its members: READY, UNAVAILABLE (with the reason) or LOADING.",
)
async def index(models: ModelsDep, request: Annotated[RepositoryIndexRequest | None, Body()] = None) -> list[RepositoryIndexItem]:
    statuses = models.index()
    if request is not None and request.ready:
        statuses = [status for status in statuses if status.state == ModelState.READY]
    return [RepositoryIndexItem.model_validate(status) for status in statuses]


def _explicit(models: ModelRepository, settings_mode: str, name: str) -> None:
    if settings_mode != "explicit":
        raise ModelControlError(
            f"model_control_mode is {settings_mode}: loads follow the repository; start with --model-control-mode explicit"
        )
    if not models.knows(name):
        raise ModelNotFoundError(f"no model {name!r} in {models.repository}")


@router.post(
    "/models/{name}/load",
    summary="Load the ensemble again (new before old) and swap it in",
    description="For the ensemble's name or any member's: re-reads ensemble.json and the manifests, verifies and "
    "warms the new ensemble up while the current one serves, then swaps. A failed load leaves the current one serving.",
    responses=_ERRORS,
)
async def load(name: str, models: ModelsDep, settings: SettingsDep) -> dict:
    _explicit(models, settings.model_control_mode, name)
    await models.load()
    return {}


@router.post(
    "/models/{name}/unload",
    summary="Stop serving the ensemble",
    description="The service is no longer ready; requests already admitted are answered first.",
    responses=_ERRORS,
)
async def unload(name: str, models: ModelsDep, settings: SettingsDep) -> dict:
    _explicit(models, settings.model_control_mode, name)
    await models.unload()
    return {}
