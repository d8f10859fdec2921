"""Early answers reach the client: the unread rest of a request body is read before the answer goes out.

A refusal sent before the body has been read (413 from Content-Length, 401, 415, 503) used to go out at once. When
the server then closed the connection (``Connection: close``, shutdown) while the client was still sending, the
unread data made the kernel reset the connection and the client lost the answer. Like nginx's lingering close,
the rest of the body is now read and discarded first, up to ``max_discard_bytes``. A body whose remainder is
larger is not read: the answer goes out at once with ``Connection: close``, and a client still sending may see a
reset instead of it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONNECTION_CLOSE = (b"connection", b"close")


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _has_body(scope: Scope) -> bool:
    return _declared_length(scope) not in (None, 0) or _header(scope, b"transfer-encoding") is not None


class LingeringRefusal:
    """Before an answer starts, read and discard what is left of the request body (up to ``max_discard_bytes``)."""

    def __init__(self, app: ASGIApp, max_discard_bytes: int) -> None:
        self.app = app
        self.max_discard_bytes = max_discard_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        received = 0
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def lingering_send(message: Message) -> None:
            nonlocal body_done
            if message["type"] == "http.response.start" and not body_done:
                body_done = True  # drained or given up: either way, never again for this request
                if not await self._discard_rest(scope, receive, received):
                    message = {**message, "headers": [*message.get("headers", []), CONNECTION_CLOSE]}
            await send(message)

        await self.app(scope, counting_receive, lingering_send)

    async def _discard_rest(self, scope: Scope, receive: Receive, received: int) -> bool:
        """Read the rest of the body; False when it is over the bound (or the client waits for 100 Continue)."""
        if received == 0 and (_header(scope, b"expect") or b"").lower() == b"100-continue":
            # The client has sent nothing and waits: reading would invite the body that is being refused.
            return False
        declared = _declared_length(scope)
        if declared is not None and declared - received > self.max_discard_bytes:
            return False
        discarded = 0
        while discarded <= self.max_discard_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return True
            discarded += len(message.get("body", b""))
        return False
