"""docker/healthcheck.py, the image's HEALTHCHECK, against a real local HTTP server."""

from __future__ import annotations

import importlib.util
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

HEALTHCHECK = Path(__file__).resolve().parents[1] / "docker" / "healthcheck.py"


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("productrec_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReadinessHandler(BaseHTTPRequestHandler):
    """/readyz answers the status the server holds; anything else 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = self.server.readyz_status if self.path == "/readyz" else 404  # type: ignore[attr-defined]
        body = b'{"ready": true}' if status == 200 else b'{"error": "not_ready", "detail": "loading"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ReadinessHandler)
    httpd.readyz_status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_ready_service_is_healthy(healthcheck: ModuleType, server: ThreadingHTTPServer, monkeypatch) -> None:
    monkeypatch.setenv("PRODUCTREC_PORT", str(server.server_port))
    # A proxy in the environment must not be used for the container's own loopback.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert healthcheck.main(["healthcheck"]) == 0


def test_not_ready_service_is_unhealthy(healthcheck: ModuleType, server: ThreadingHTTPServer, monkeypatch, capsys) -> None:
    server.readyz_status = 503  # type: ignore[attr-defined]
    monkeypatch.setenv("PRODUCTREC_PORT", str(server.server_port))
    assert healthcheck.main(["healthcheck"]) == 1
    assert "503" in capsys.readouterr().err


def test_url_argument_overrides_the_port(healthcheck: ModuleType, server: ThreadingHTTPServer, monkeypatch) -> None:
    monkeypatch.setenv("PRODUCTREC_PORT", "1")
    assert healthcheck.main(["healthcheck", f"http://127.0.0.1:{server.server_port}/readyz"]) == 0
    assert healthcheck.main(["healthcheck", f"http://127.0.0.1:{server.server_port}/missing"]) == 1


def test_no_server_is_unhealthy(healthcheck: ModuleType, monkeypatch, capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    monkeypatch.setenv("PRODUCTREC_PORT", str(free_port))
    assert healthcheck.main(["healthcheck"]) == 1
    assert "not ready" in capsys.readouterr().err
