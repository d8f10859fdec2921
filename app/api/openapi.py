"""The OpenAPI spec of one app instance: its routes' spec, bounded by its settings and its ensemble."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from app.api.deps import current_pipeline
from app.api.options import option_maxima
from app.core.config import Settings

PREDICT_PATHS = ("/v1/predict", "/v1/predict/batch")
BATCH_PATH = "/v1/predict/batch"


def _integer_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The integer branches of a parameter schema (``int | None`` is an ``anyOf`` with null)."""
    return [branch for branch in schema.get("anyOf", [schema]) if branch.get("type") == "integer"]


def bounded_spec(spec: dict[str, Any], settings: Settings, maxima: dict[str, int] | None) -> dict[str, Any]:
    """A copy of ``spec`` with the limits the service enforces: once the ensemble is loaded, each option of
    ``maxima`` up to its value (top_k: the class count; average_k: the sizes the members' thresholds were fitted
    for, the option gone where there are none), and at most ``max_batch_items`` files in a batch."""
    spec = copy.deepcopy(spec)
    for path in PREDICT_PATHS:
        operation = spec["paths"][path]["post"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        for option, maximum in (maxima or {}).items():
            if maximum == 0:
                operation["parameters"] = [param for param in operation["parameters"] if param["name"] != option]
                form.pop(option, None)
                continue
            schemas = [param["schema"] for param in operation["parameters"] if param["name"] == option] + [form[option]]
            for schema in schemas:
                for branch in _integer_schemas(schema):
                    branch["maximum"] = maximum
    batch_form = spec["paths"][BATCH_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    batch_form["properties"]["files"]["maxItems"] = settings.max_batch_items
    return spec


def install_instance_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and /openapi.json) describe this instance: its settings and, once loaded, its model.

    Built per loaded ensemble's bounds, so a spec asked for while the repository loads (or before a reload) does not stick.
    """
    generic = app.openapi
    built: dict[tuple, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        maxima = option_maxima(current_pipeline(app))
        key = tuple(maxima.items())
        if key not in built:
            built[key] = bounded_spec(generic(), app.state.settings, maxima)
        return built[key]

    app.openapi = openapi  # type: ignore[method-assign]
