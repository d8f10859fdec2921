"""A grpc.aio server for ``inference.GRPCInferenceService`` on the service's event loop.

Every call reads the current pipeline from the app's state (never cached, so a reload is seen at once),
goes through the same pipeline, limits and statistics as the HTTP front end, and is counted in the same
Prometheus metrics (endpoint = the RPC's full name, method ``gRPC``, status the HTTP equivalent).
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from typing import Any, Awaitable, Callable

import grpc
from fastapi import FastAPI

from app.contract.errors import DomainError, error_record
from app.engine.pipeline import Pipeline
from app.engine.repository import ModelRepository
from app.grpc import grpc_predict_v2_pb2 as pb
from app.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from app.grpc.codec import metadata_to_pb, request_from_pb, response_to_pb
from app.protocol.models import find_model, run_inference, server_metadata

log = logging.getLogger("productrec.grpc")

SERVICE = "/inference.GRPCInferenceService/"
API_KEY_METADATA = "x-api-key"
SHUTDOWN_GRACE_S = 5.0

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


class NotReadyError(DomainError):
    status, code, retry = 503, "not_ready", True


class UnauthorizedError(DomainError):
    status, code = 401, "unauthorized"


Handler = Callable[["InferenceServicer", Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc(protected: bool = True) -> Callable[[Handler], Handler]:
    """Metrics, the API key (when ``protected``) and errors -> gRPC status codes, for one RPC."""

    def decorate(handler: Handler) -> Handler:
        endpoint = SERVICE + handler.__name__

        @functools.wraps(handler)
        async def wrapper(self: "InferenceServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status, failure = 200, None
            try:
                if protected:
                    self.check_api_key(context)
                return await handler(self, request, context)
            except Exception as exc:  # every failure becomes a status code; bugs are logged as 500s
                failure = exc
                status = exc.status if isinstance(exc, DomainError) else 500
                if status == 500:
                    log.error("internal error in %s", endpoint, exc_info=exc)
            finally:
                self.count(endpoint, status, failure, time.perf_counter() - started)
            await context.abort(_STATUS_CODES.get(status, grpc.StatusCode.INTERNAL), str(failure))

        return wrapper

    return decorate


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 gRPC API over the app's current pipeline."""

    def __init__(self, app: FastAPI) -> None:
        self.state = app.state
        self.models: ModelRepository = app.state.models

    def pipeline(self) -> Pipeline:
        """The pipeline serving now (a reload swaps it; a call keeps the one it started with)."""
        pipeline = self.models.pipeline
        if pipeline is None:
            raise NotReadyError(self.models.unavailable_reason)
        return pipeline

    def check_api_key(self, context: grpc.aio.ServicerContext) -> None:
        configured = self.state.settings.api_key
        if configured is None:
            return
        sent = dict(context.invocation_metadata() or ()).get(API_KEY_METADATA, "")
        if not hmac.compare_digest(str(sent).encode(), configured.get_secret_value().encode()):
            raise UnauthorizedError(f"missing or wrong {API_KEY_METADATA} metadata")

    def count(self, endpoint: str, status: int, failure: BaseException | None, seconds: float) -> None:
        metrics = self.state.metrics
        metrics.requests.labels(endpoint, "gRPC", str(status)).inc()
        metrics.latency.labels(endpoint).observe(seconds)
        if failure is not None:
            metrics.errors.labels(endpoint, str(status), error_record(failure)["error"]).inc()

    @rpc(protected=False)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc(protected=False)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.models.pipeline is not None)

    @rpc(protected=False)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**server_metadata())

    @rpc()
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        pipeline = self.models.pipeline
        return pb.ModelReadyResponse(ready=pipeline is not None and bool(find_model(pipeline, request.name, request.version)))

    @rpc()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return metadata_to_pb(find_model(self.pipeline(), request.name, request.version).metadata)

    @rpc()
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = find_model(self.pipeline(), request.model_name, request.model_version)
        response = await run_inference(model, request_from_pb(request), self.state.v2_statistics)
        return response_to_pb(response)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(app: FastAPI, host: str, port: int) -> grpc.aio.Server:
    """Serve the v2 gRPC API on ``host:port`` in the running event loop."""
    settings = app.state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    server.add_insecure_port(_address(host, port))
    await server.start()
    log.info("gRPC (KServe v2) on %s", _address(host, port))
    return server


async def stop_grpc_server(server: grpc.aio.Server) -> None:
    """Stop taking calls; calls in progress get ``SHUTDOWN_GRACE_S`` to finish."""
    await server.stop(SHUTDOWN_GRACE_S)
