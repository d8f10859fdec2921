"""The FastAPI application: ``create_app()`` and the lifespan that loads the ensemble.

Run it with ``productrec serve`` (or ``uvicorn --factory app.main:create_app``).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from fastapi import FastAPI, Security
from pydantic import BaseModel

from app.api.client_limit import client_limiter
from app.api.deps import verify_api_key, verify_management_key
from app.api.errors import install_error_handlers
from app.api.linger import LingeringRefusal
from app.api.middleware import MetricsMiddleware
from app.api.openapi import install_instance_openapi
from app.api.routes import health, metrics, models, predict, repository, v2
from app.api.schemas import ErrorResponse, V2ErrorResponse
from app.core.config import Settings, get_settings
from app.contract.manifest import ENSEMBLE_FILE
from app.engine.ensemble import ProviderUnavailableError, require_cuda
from app.engine.metrics import MULTIPROCESS_DIR_ENV, ServingMetrics
from app.engine.repository import ModelRepository
from app.protocol.stats import Statistics

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("productrec.app")

EXIT_STARTUP_FAILED = 3  # uvicorn's own exit status when the lifespan fails

DESCRIPTION = """
Product recognition with an ensemble of BSCE-trained classifiers exported to ONNX:
multi-crop test-time augmentation per member, top-1 voting across members, top-k labels.

Send an image: `curl -F file=@photo.jpg http://localhost:8000/v1/predict`
or `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://localhost:8000/v1/predict`.
Errors are JSON `{"error": code, "detail": text}`.

The Open Inference Protocol (KServe v2, as Triton speaks it) is served under `/v2`, and over gRPC
on `PRODUCTREC_GRPC_PORT` when set; its errors are `{"error": text}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and verify every member (``ModelRepository``); on a repository problem stay up (live) but not ready."""
    settings: Settings = app.state.settings
    lifecycle: ModelRepository = app.state.models
    try:
        await lifecycle.start()
    except ProviderUnavailableError:
        log.critical("refusing to start: PRODUCTREC_PROVIDER=%s cannot be honoured", settings.provider, exc_info=True)
        raise
    grpc_server = None
    try:
        grpc_server = await _start_grpc(app, settings)
        yield
    finally:
        if grpc_server is not None:
            from app.grpc.server import stop_grpc_server

            await stop_grpc_server(grpc_server)
        await lifecycle.close()
        app.state.metrics.process_exited()


async def _start_grpc(app: FastAPI, settings: Settings) -> "grpc.aio.Server | None":
    """The v2 gRPC server when ``grpc_port`` is set (imported only then: see ``app.grpc``)."""
    if settings.grpc_port is None:
        return None
    from app.grpc.server import start_grpc_server

    return await start_grpc_server(app, settings.host, settings.grpc_port)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service: routers, error handlers, metrics, and the lifespan that loads the ensemble."""
    settings = settings or get_settings()
    app = FastAPI(
        title="ProductRec",
        summary="Product recognition service: an ONNX ensemble with multi-crop TTA and top-1 voting.",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=[
            {"name": "predict", "description": "Recognise products in images."},
            {"name": "models", "description": "What is being served."},
            {"name": "health", "description": "Liveness and readiness probes."},
            {"name": "metrics", "description": "Prometheus metrics."},
            {"name": "v2", "description": "The Open Inference Protocol (KServe v2) with Triton's extensions."},
        ],
    )
    app.state.settings = settings
    app.state.metrics = ServingMetrics()
    app.state.models = ModelRepository(settings, app.state.metrics)
    app.state.client_limiter = client_limiter(settings)
    app.state.v2_statistics = Statistics()
    install_error_handlers(app)
    app.add_middleware(LingeringRefusal, max_discard_bytes=settings.max_discard_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: its latency includes the above
    for router in (predict.router, models.router):
        app.include_router(router, **_api_key_guard(settings, ErrorResponse))
    v2_guard = _api_key_guard(settings, V2ErrorResponse)
    app.include_router(v2.models_router, **v2_guard)
    management = _management_guard(settings, v2_guard)
    app.include_router(repository.router, **management)
    if settings.model_control_mode == "explicit":
        app.include_router(repository.control_router, **management)
    for router in (health.router, metrics.router, v2.router):
        app.include_router(router)
    install_instance_openapi(app)
    return app


def _api_key_guard(settings: Settings, error_model: type[BaseModel]) -> dict[str, Any]:
    """``include_router`` arguments that put /v1/* behind the API key, when one is set; else none.

    Only then does the spec declare the X-API-Key scheme and the 401: a spec that asks for a key the service
    does not check is wrong for every client and contract test.
    """
    if settings.api_key is None:
        return {}
    return {
        "dependencies": [Security(verify_api_key)],
        "responses": {401: {"model": error_model, "description": "Missing or wrong X-API-Key."}},
    }


def _management_guard(settings: Settings, api_key_guard: dict[str, Any]) -> dict[str, Any]:
    """The API key's guard plus, when a management key is set, that key (for the repository endpoints)."""
    if settings.management_api_key is None:
        return api_key_guard
    return {
        "dependencies": [*api_key_guard.get("dependencies", []), Security(verify_management_key)],
        "responses": {401: {"model": V2ErrorResponse, "description": "Missing or wrong X-API-Key or X-Management-Key."}},
    }


def serve_command(args) -> int:
    """``productrec serve``: uvicorn on ``create_app``, settings from the environment and the options."""
    import uvicorn

    from app.cli_commands import given_settings, settings_from_args

    settings = settings_from_args(args)
    # uvicorn's worker processes build their own app from the environment, so the options go there.
    for name in given_settings(args):
        value = getattr(settings, name)
        os.environ[f"PRODUCTREC_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    get_settings.cache_clear()
    if not (Path(settings.repository) / ENSEMBLE_FILE).is_file():
        log.warning("%s has no %s: the service will start but not be ready", settings.repository, ENSEMBLE_FILE)
    if settings.provider == "cuda" and settings.workers > 1:
        # uvicorn's supervisor returns normally when its workers fail to start, so check CUDA here first.
        try:
            require_cuda(settings.repository)
        except ProviderUnavailableError as exc:
            log.critical("refusing to start: %s", exc)
            return EXIT_STARTUP_FAILED
    with _shared_metrics_dir(settings.workers):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=args.log_level,
            log_config=_log_config(args.log_level),
        )
    return 0


@contextmanager
def _shared_metrics_dir(workers: int) -> Iterator[None]:
    """With several workers, a fresh directory for prometheus_client's multiprocess mode (removed after).

    Set before uvicorn starts the workers, which read it when they import prometheus_client; a directory the
    environment already names (a process manager's) is used as it is.
    """
    if workers == 1 or os.environ.get(MULTIPROCESS_DIR_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="productrec-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR_ENV] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR_ENV]


def _log_config(level: str) -> dict:
    """uvicorn's logging config plus our loggers, so worker processes log the providers they got too."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["productrec"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["productrec"] = {
        "formatter": "productrec",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["productrec"] = {"handlers": ["productrec"], "level": level.upper(), "propagate": False}
    return config
