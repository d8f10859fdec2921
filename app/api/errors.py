"""Every error answer is JSON ``{"error": code, "detail": text}``; bad input is always a 4xx.

Under ``/v2`` the Open Inference Protocol's shape applies instead: ``{"error": text}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.middleware import endpoint_label
from app.contract.errors import DomainError, error_record

log = logging.getLogger("productrec.api")


class ApiError(Exception):
    """An answer other than 200: status, error code, detail and extra headers."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error_for(exc: BaseException, retry_after_s: int = 1) -> ApiError:
    """The HTTP answer for an exception raised while predicting one image: its own status and code."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(retry_after_s)} if exc.retry else None
        return ApiError(exc.status, exc.code, str(exc), headers)
    log.error("internal error", exc_info=exc)
    record = error_record(exc)
    return ApiError(500, record["error"], record["detail"])


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(request: Request, error: ApiError) -> JSONResponse:
    """The JSON answer for ``error`` (in the v2 shape under /v2), counted in the error metrics."""
    record_error(request, error)
    if is_v2(request.url.path):
        return JSONResponse({"error": error.detail}, status_code=error.status, headers=error.headers)
    return error.response()


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def record_error(request: Request, error: ApiError) -> None:
    """Count an error answer (or a batch item's error) by endpoint, status and code."""
    request.app.state.metrics.errors.labels(endpoint_label(request.scope), str(error.status), error.error).inc()


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, api_error_for(exc, request.app.state.settings.retry_after_s))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(request, ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', '')}"
        for problem in exc.errors()
    )
    return error_response(request, ApiError(422, "invalid_request", problems))


def install_error_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors (404, 405, validation) use the same JSON shape as ours."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DomainError, _domain_error)
    # Anything else is a bug: still JSON (500), and Starlette re-raises it so it is logged.
    app.add_exception_handler(Exception, _domain_error)
