"""Floors for the serving benchmark: what HTTP alone costs, and what the service's app adds to it.

``python -m bench.serving`` serves these (``bench.http_floor:app``, ``bench.http_floor:app_without_pipeline``)
with the same uvicorn (``--http auto``) and loads them with the same client as the real service:

- ``app``: a bare ASGI app that drains the request body and sends a canned answer. No framework,
  no decoding, no model: the CPU per request that any Python HTTP service pays here.
- ``app_without_pipeline`` (a factory): the service's own application (``create_app``: middleware,
  routers, dependencies, body limits, response model) with the prediction pipeline replaced by the
  canned answer: the HTTP layer's cost without decoding, batching or inference.

The canned answer is a real response of the service, read from the file named by
``PRODUCTREC_BENCH_FLOOR_RESPONSE``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import AsyncIterator, Sequence

_BODY = Path(os.environ["PRODUCTREC_BENCH_FLOOR_RESPONSE"]).read_bytes()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope, receive, send) -> None:
    """Drain the request body, then send the canned answer (lifespan messages are ignored)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def app_without_pipeline():
    """``create_app()`` whose lifespan installs a pipeline that answers every image with the canned prediction."""
    from app.main import create_app
    from app.api.schemas import Prediction

    canned = Prediction.model_validate_json(_BODY)

    class CannedPipeline:
        """The part of ``app.engine.pipeline.Pipeline`` the routes use."""

        ensemble = SimpleNamespace(num_classes=max(label.index for label in canned.labels) + 1, members=canned.members)
        queue_depth = 0

        async def predict(
            self, images: Sequence[bytes], top_k: int, tta: bool, average_k: int | None = None
        ) -> list[Prediction]:
            return [canned for _ in images]

    application = create_app()

    @asynccontextmanager
    async def lifespan(_) -> AsyncIterator[None]:
        application.state.models.pipeline = CannedPipeline()  # in place of the model repository's load
        yield

    application.router.lifespan_context = lifespan
    return application
