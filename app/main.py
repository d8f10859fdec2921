"""The FastAPI application: ``create_app()`` and the lifespan that loads the ensemble.

Run it with ``productrec serve`` (or ``uvicorn --factory app.main:create_app``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import tempfile
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.middleware import MetricsMiddleware
from app.api.routes import health, metrics, models, predict, v2
from app.core.config import Settings, get_settings
from app.contract.manifest import ENSEMBLE_FILE
from app.engine.ensemble import Ensemble, ProviderUnavailableError, require_cuda
from app.engine.metrics import MULTIPROCESS_DIR_ENV, ServingMetrics
from app.engine.pipeline import Pipeline
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
    """Load and verify every member; on a repository problem stay up (live) but not ready."""
    settings: Settings = app.state.settings
    metrics: ServingMetrics = app.state.metrics
    pipeline: Pipeline | None = None
    metrics.ready.set(0)
    try:
        ensemble = await asyncio.to_thread(Ensemble.from_settings, settings)
    except ProviderUnavailableError:
        log.critical("refusing to start: PRODUCTREC_PROVIDER=%s cannot be honoured", settings.provider, exc_info=True)
        raise
    except Exception as exc:  # RepositoryError names the file; anything else is reported the same way
        app.state.load_error = f"model repository {settings.repository} not loaded: {exc}"
        log.error("%s; the service stays up but is not ready", app.state.load_error)
    else:
        pipeline = Pipeline(ensemble, settings, metrics)
        await pipeline.start()
        app.state.pipeline = pipeline
        app.state.load_error = None
        metrics.ready.set(1)
        log.info(
            "ready: ensemble %r, members %s, providers %s",
            ensemble.spec.name,
            [f"{m.manifest.name}/{m.manifest.version}" for m in ensemble.members],
            sorted({provider for m in ensemble.members for provider in m.providers}),
        )
    grpc_server = None
    try:
        grpc_server = await _start_grpc(app, settings)
        yield
    finally:
        if grpc_server is not None:
            from app.grpc.server import stop_grpc_server

            await stop_grpc_server(grpc_server)
        app.state.pipeline = None
        app.state.load_error = "shutting down"
        metrics.ready.set(0)
        if pipeline is not None:
            await pipeline.close()
        metrics.process_exited()


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
    app.state.pipeline = None
    app.state.load_error = "the model repository is still loading"
    app.state.v2_statistics = Statistics()
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in (predict.router, models.router, health.router, metrics.router, v2.router, v2.models_router):
        app.include_router(router)
    return app


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
