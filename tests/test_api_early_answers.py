"""Early answers reach a client that is still sending: a real server (uvicorn, httptools) and a raw socket that
streams a 30 MB body in 256 KiB writes, without ``Expect: 100-continue``, and asks the server to close after."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import pytest
import uvicorn
from serving_helpers import settings_for

from app.main import create_app

BODY_BYTES = 30 * 1024 * 1024
WRITE_BYTES = 256 * 1024
BOUNDARY = b"early-answer-boundary"
MULTIPART_HEAD = (
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)
MULTIPART_TAIL = b"\r\n--" + BOUNDARY + b"--\r\n"
# (content type, bytes before and after the 30 MB, expected status and error)
BODIES = {
    "raw-jpeg": ("image/jpeg", b"", b"", 413, "payload_too_large"),
    "multipart": (
        f"multipart/form-data; boundary={BOUNDARY.decode()}", MULTIPART_HEAD, MULTIPART_TAIL, 413, "payload_too_large"
    ),
    "unsupported-type": ("text/plain", b"", b"", 415, "unsupported_media_type"),
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def server_factory(trained_repository) -> Iterator:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides) -> int:
        """A uvicorn server (httptools, as ``productrec serve``) in a thread on a free port; its port."""
        app = create_app(settings_for(trained_repository, decode_workers=1, **overrides))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def port(server_factory) -> int:
    return server_factory()


def read_answer(sock: socket.socket) -> Answer:
    """One complete HTTP response (Content-Length framed); fails on a reset or a close before its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a complete HTTP response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed in the middle of the response body: {body!r}"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def request_head(content_type: str, length: int, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{connection}\r\n"
    ).encode()


@pytest.mark.parametrize("kind", list(BODIES))
def test_client_still_sending_gets_the_early_answer(port: int, kind: str) -> None:
    content_type, before, after, status, error = BODIES[kind]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # A reset while sending (the server closed with our data unread) fails here, as it did before the fix.
        sock.sendall(request_head(content_type, len(before) + BODY_BYTES + len(after)) + before)
        block = bytes(WRITE_BYTES)
        for _ in range(BODY_BYTES // WRITE_BYTES):
            sock.sendall(block)
        sock.sendall(after)
        answer = read_answer(sock)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.body)["error"] == error


def test_rest_over_the_discard_bound_is_not_read_and_the_connection_closes(server_factory) -> None:
    port = server_factory(max_discard_bytes=1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # Nothing of the body yet, and keep-alive asked for: the answer comes at once, and the server closes.
        sock.sendall(request_head("image/jpeg", BODY_BYTES, close=False))
        answer = read_answer(sock)
        assert sock.recv(1) == b""  # closed by the server
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert json.loads(answer.body)["error"] == "payload_too_large"
