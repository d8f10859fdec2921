"""Per-client concurrency limit on the predict endpoints: one client cannot fill the decode pool or the queue.

A client is its API key when the service checks one, else its address (the
address uvicorn reports: behind a proxy, set ``FORWARDED_ALLOW_IPS`` to the
proxy's so that it is the client's, not the proxy's). A request over
``max_requests_per_client`` gets 429 with Retry-After. Counted per process:
each uvicorn worker has its own counts.
"""

from __future__ import annotations

import hashlib
from typing import AsyncIterator

from fastapi import Request

from app.api.deps import SettingsDep
from app.api.errors import ApiError
from app.core.config import Settings


class ClientLimiter:
    """Requests in flight per client (only the event loop touches it: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        """Count one more request of ``client``; False (nothing counted) when it already has ``limit``."""
        current = self._in_flight.get(client, 0)
        if current >= self.limit:
            return False
        self._in_flight[client] = current + 1
        return True

    def release(self, client: str) -> None:
        remaining = self._in_flight[client] - 1
        if remaining:
            self._in_flight[client] = remaining
        else:
            del self._in_flight[client]  # the table holds active clients only

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)


def client_limiter(settings: Settings) -> ClientLimiter | None:
    """The app's limiter, or None when the limit is off (the default)."""
    return ClientLimiter(settings.max_requests_per_client) if settings.max_requests_per_client else None


def client_identity(request: Request, settings: Settings) -> str:
    """The API key's digest when the service checks keys (the key was verified first), else the address."""
    if settings.api_key is not None:
        key = request.headers.get("x-api-key", "")
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    client = request.client
    return "address:" + (client.host if client else "unknown")


async def client_slot(request: Request, settings: SettingsDep) -> AsyncIterator[None]:
    """Hold one of the client's slots for the request; 429 with Retry-After when it has none left."""
    limiter: ClientLimiter | None = request.app.state.client_limiter
    if limiter is None:
        yield
        return
    client = client_identity(request, settings)
    if not limiter.acquire(client):
        raise ApiError(
            429,
            "too_many_requests",
            f"this client already has {limiter.limit} requests in flight "
            f"(limit max_requests_per_client={limiter.limit}); retry when one has been answered",
            {"Retry-After": str(settings.retry_after_s)},
        )
    try:
        yield
    finally:
        limiter.release(client)
