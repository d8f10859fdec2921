"""The request options ``top_k``, ``tta`` and ``average_k`` as multipart fields (the query has FastAPI's own parsing)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict, TypeAdapter, ValidationError
from starlette.datastructures import FormData

from app.api.errors import ApiError

_JSON_BOOLEANS = {"true": True, "false": False}


def _json_boolean(value: Any) -> Any:
    return _JSON_BOOLEANS.get(value, value) if isinstance(value, str) else value


# A multipart field is text: a boolean is spelled as the spec's JSON serialises it ("true"/"false"), never
# pydantic's lax "1"/"yes"/"on", which a schema-following client would send only for an integer or a string.
OPTION_TYPES: dict[str, TypeAdapter[Any]] = {
    "top_k": TypeAdapter(Annotated[int, Field(ge=1)]),
    "tta": TypeAdapter(Annotated[bool, Strict(), BeforeValidator(_json_boolean)]),
    "average_k": TypeAdapter(Annotated[int, Field(ge=1)]),
}


def option_value(name: str, raw: Any, num_classes: int | None = None) -> Any:
    """One option from its raw value; 422 when it has the wrong type or (top_k) is out of 1..num_classes."""
    try:
        value = OPTION_TYPES[name].validate_python(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", f"{name}: {exc.errors()[0]['msg']}") from exc
    if name == "top_k" and num_classes is not None and value > num_classes:
        raise ApiError(422, "invalid_request", f"top_k must be between 1 and {num_classes}, got {value}")
    return value


def check_form_options(form: FormData, num_classes: int | None) -> None:
    """Validate every option field of a multipart body, also those a query parameter overrides.

    A request is refused when any part of it is invalid, as its OpenAPI spec promises, not only the part used.
    """
    for name in OPTION_TYPES:
        values = form.getlist(name)
        if len(values) > 1:
            raise ApiError(422, "invalid_request", f"{name}: given {len(values)} times, expected once")
        for raw in values:
            option_value(name, raw, num_classes)
