"""The OpenAPI spec of one app instance: its routes' spec, bounded by its settings and its ensemble."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from app.api.deps import current_pipeline
from app.core.config import Settings

PREDICT_PATHS = ("/v1/predict", "/v1/predict/batch")
BATCH_PATH = "/v1/predict/batch"


def _integer_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The integer branches of a parameter schema (``int | None`` is an ``anyOf`` with null)."""
    return [branch for branch in schema.get("anyOf", [schema]) if branch.get("type") == "integer"]


def bounded_spec(spec: dict[str, Any], settings: Settings, num_classes: int | None) -> dict[str, Any]:
    """A copy of ``spec`` with the limits the service enforces: top_k up to the class count (once the ensemble is
    loaded), and at most ``max_batch_items`` files in a batch."""
    spec = copy.deepcopy(spec)
    for path in PREDICT_PATHS:
        operation = spec["paths"][path]["post"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        top_k = [param["schema"] for param in operation["parameters"] if param["name"] == "top_k"] + [form["top_k"]]
        if num_classes is not None:
            for schema in top_k:
                for branch in _integer_schemas(schema):
                    branch["maximum"] = num_classes
    batch_form = spec["paths"][BATCH_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    batch_form["properties"]["files"]["maxItems"] = settings.max_batch_items
    return spec


def install_instance_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and /openapi.json) describe this instance: its settings and, once loaded, its model.

    Built per class count, so a spec asked for while the repository loads does not stick.
    """
    generic = app.openapi
    built: dict[int | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        pipeline = current_pipeline(app)
        num_classes = pipeline.ensemble.num_classes if pipeline is not None else None
        if num_classes not in built:
            built[num_classes] = bounded_spec(generic(), app.state.settings, num_classes)
        return built[num_classes]

    app.openapi = openapi  # type: ignore[method-assign]
