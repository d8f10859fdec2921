"""The model repository extension of the v2 protocol (Triton's): the index, and loads and unloads.

The index answers in every mode; loads and unloads exist only in the explicit model control mode
(``create_app`` mounts ``control_router`` then), so the spec lists them only where they are taken.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from app.api.deps import ModelsDep
from app.api.schemas import RepositoryIndexItem, RepositoryIndexRequest, V2ErrorResponse
from app.engine.repository import ModelNotFoundError, ModelState

router = APIRouter(prefix="/v2/repository", tags=["repository"])
control_router = APIRouter(prefix="/v2/repository", tags=["repository"])

_ERRORS = {
    400: {"model": V2ErrorResponse, "description": "The load failed (the served ensemble stays)."},
    404: {"model": V2ErrorResponse, "description": "No model of that name in the repository."},
}


@router.post(
    "/index",
    response_model=list[RepositoryIndexItem],
    summary="Every model of the repository with its state",
    description="The ensemble and each version of its members: READY, UNAVAILABLE (with the reason) or LOADING.",
    responses={400: {"model": V2ErrorResponse, "description": "A malformed body."}},
)
async def index(models: ModelsDep, request: Annotated[RepositoryIndexRequest | None, Body()] = None) -> list[RepositoryIndexItem]:
    statuses = models.index()
    if request is not None and request.ready:
        statuses = [status for status in statuses if status.state == ModelState.READY]
    return [RepositoryIndexItem.model_validate(status) for status in statuses]


def _known(models: ModelsDep, name: str) -> None:
    if not models.knows(name):
        raise ModelNotFoundError(f"no model {name!r} in {models.repository}")


@control_router.post(
    "/models/{name}/load",
    summary="Load the ensemble again (new before old) and swap it in",
    description="For the ensemble's name or any member's: re-reads ensemble.json and the manifests, verifies and "
    "warms the new ensemble up while the current one serves, then swaps. A failed load leaves the current one serving.",
    responses=_ERRORS,
)
async def load(name: str, models: ModelsDep) -> dict:
    _known(models, name)
    await models.load()
    return {}


@control_router.post(
    "/models/{name}/unload",
    summary="Stop serving the ensemble",
    description="The service is no longer ready; requests already admitted are answered first.",
    responses=_ERRORS,
)
async def unload(name: str, models: ModelsDep) -> dict:
    _known(models, name)
    await models.unload()
    return {}
