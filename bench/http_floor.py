"""The HTTP floor: a bare ASGI app that reads the request body and answers a fixed prediction.

``bench/serving.py`` serves it with the same uvicorn (``--http auto``) and loads it with the same
client as the real service, so its CPU per request is what HTTP alone costs on this machine:
no framework, no decoding, no model. The answer is a real response of the service, read from
the file named by ``PRODUCTREC_BENCH_FLOOR_RESPONSE``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
