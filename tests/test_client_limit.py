"""The per-client concurrency limit's bookkeeping and who counts as one client (the API side is in test_api_bombs)."""

from __future__ import annotations

from pydantic import SecretStr
from starlette.requests import Request

from app.api.client_limit import ClientLimiter, client_identity, client_limiter
from app.core.config import Settings


def request(address: str, key: str | None = None) -> Request:
    headers = [(b"x-api-key", key.encode())] if key is not None else []
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers, "client": (address, 1)}
    return Request(scope)


def settings(**values) -> Settings:
    return Settings(_env_prefix="PRODUCTREC_TEST_UNUSED_", **values)


def test_each_client_has_its_own_allowance() -> None:
    limiter = ClientLimiter(2)
    assert limiter.acquire("a") and limiter.acquire("a")
    assert not limiter.acquire("a") and limiter.in_flight("a") == 2  # a refusal counts nothing
    assert limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a")
    for client in ("a", "a", "b"):
        limiter.release(client)
    assert limiter.in_flight("a") == limiter.in_flight("b") == 0 and not limiter._in_flight  # idle clients dropped


def test_the_limit_is_off_by_default() -> None:
    assert settings().max_requests_per_client == 0 and client_limiter(settings()) is None
    assert client_limiter(settings(max_requests_per_client=3)).limit == 3


def test_a_client_is_its_address_without_a_service_key_and_its_key_with_one() -> None:
    def identity(address: str, key: str | None, service: Settings) -> str:
        return client_identity(request(address, key), service)

    open_service = settings()
    # without a service key, a client-chosen header must not buy a fresh allowance
    assert identity("10.0.0.1", "x", open_service) == identity("10.0.0.1", "y", open_service)
    assert identity("10.0.0.1", None, open_service) != identity("10.0.0.2", None, open_service)
    keyed = settings(api_key=SecretStr("secret"))
    assert identity("10.0.0.1", "secret", keyed) == identity("10.0.0.2", "secret", keyed)
    assert "secret" not in identity("10.0.0.1", "secret", keyed)
