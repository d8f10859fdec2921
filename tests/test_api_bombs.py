"""Decoder bombs against the real app (issue 16): refused from their headers at once, and never in the way of
ordinary images; the per-client limit.

Timings are measured from the client. The stream of ordinary images runs at concurrency 4 while the bombs are
in flight; a bomb that held the decode workers would show as a p99 of seconds. The target is a p99 under
100 ms; where this machine's own p99 without bombs is already over that (2 cores shared with other jobs:
120-180 ms measured), the p99 with bombs must stay within 3x the p99 measured just before without them.
"""

from __future__ import annotations

import gc
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving_helpers import encode, metric, scan_bomb_jpeg, serving, wait_until_in_flight

CONCURRENCY = 4
P99_LIMIT_S = 0.1
BOMB_LIMIT_S = 0.1
LOADED_MACHINE_FACTOR = 3.0


@lru_cache
def huge_progressive_jpeg() -> bytes:
    """A real-looking 39.7 MP progressive JPEG (6300 x 6300, 5 MB): it passes every header check, and decoding
    it takes about a second of CPU (a smooth picture with sensor-like noise, quality 90)."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 200, (48, 48, 3), dtype=np.uint8)).resize((6300, 6300), Image.BICUBIC)
    pixels = np.asarray(smooth)
    noise = rng.integers(0, 12, (512, 512, 3), dtype=np.uint8)
    pixels = pixels + np.tile(noise, (13, 13, 1))[:6300, :6300]  # the smooth part stays under 244: no overflow
    return encode(Image.fromarray(pixels), "JPEG", quality=90, progressive=True)


@pytest.fixture(scope="module")
def client(trained_repository):
    with serving(trained_repository) as client:  # the default limits, 2 decode workers
        yield client


@pytest.fixture(scope="module")
def normal_images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images


def post(client: TestClient, data: bytes):
    return client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})


@dataclass
class Timed:
    seconds: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, client: TestClient, data: bytes) -> None:
        started = time.perf_counter()
        response = post(client, data)
        self.seconds.append(time.perf_counter() - started)
        self.statuses.append(response.status_code)
        self.errors.append(response.json().get("error", "") if response.status_code != 200 else "")

    @property
    def p99(self) -> float:
        return float(np.percentile(self.seconds, 99))


@contextmanager
def heap_frozen() -> Iterator[None]:
    """The test process's own objects out of the garbage collector's reach for the block (``gc.freeze``).

    The app runs inside pytest, whose heap holds torch and timm: a full collection of it paused the app for
    0.2-0.36 s (measured), and a stream it fell into had a p99 of 0.41-0.51 s instead of 0.06-0.08 s. The
    service's own process imports neither; the app's new objects are still collected as usual.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def stream_during(
    client: TestClient, images: list[bytes], bombs: list[bytes], minimum: int = 200
) -> tuple[Timed, Timed]:
    """Ordinary images at ``CONCURRENCY`` until the bombs (sent together, once the stream runs) are answered."""
    normal, refused = Timed(), Timed()
    bombs_done = threading.Event()
    lock = threading.Lock()

    def ordinary(offset: int) -> None:
        sent = 0
        while not bombs_done.is_set() or sent < minimum // CONCURRENCY:
            timed = Timed()
            timed.record(client, images[(offset + sent * CONCURRENCY) % len(images)])
            with lock:
                normal.seconds += timed.seconds
                normal.statuses += timed.statuses
                normal.errors += timed.errors
            sent += 1

    def bomb(data: bytes) -> Timed:
        timed = Timed()
        timed.record(client, data)
        return timed

    with heap_frozen(), ThreadPoolExecutor(CONCURRENCY + len(bombs)) as threads:
        streams = [threads.submit(ordinary, offset) for offset in range(CONCURRENCY)]
        time.sleep(0.2)  # the stream is running
        for timed in threads.map(bomb, bombs):
            refused.seconds += timed.seconds
            refused.statuses += timed.statuses
            refused.errors += timed.errors
        bombs_done.set()
        for stream in streams:
            stream.result()
    return normal, refused


def p99_limit(client: TestClient, images: list[bytes]) -> float:
    """The p99 the stream must keep with bombs: 100 ms, or 3x this machine's p99 without them if that is more."""
    for data in images[:8]:  # warm up
        assert post(client, data).status_code == 200
    baseline, _ = stream_during(client, images, [])
    return max(P99_LIMIT_S, LOADED_MACHINE_FACTOR * baseline.p99)


def assert_kept_latency(normal: Timed, limit: float) -> None:
    assert set(normal.statuses) == {200}, sorted(set(zip(normal.statuses, normal.errors)))
    assert normal.p99 < limit, f"p99 {normal.p99:.3f} s over {len(normal.seconds)} images; limit {limit:.3f} s"


def test_scan_bombs_are_refused_at_once_while_ordinary_images_keep_their_latency(client, normal_images) -> None:
    bomb = scan_bomb_jpeg()  # 6000 x 6000 (under the 40 MP limit), ~200 KB, 20,000 empty scans: ~40 s of CPU
    assert len(bomb) < 210_000 and Image.open(io.BytesIO(bomb)).size == (6000, 6000)
    limit = p99_limit(client, normal_images)
    normal, bombs = stream_during(client, normal_images, [bomb, bomb])
    assert bombs.statuses == [422, 422] and bombs.errors == ["image_too_complex"] * 2
    assert max(bombs.seconds) < BOMB_LIMIT_S, bombs.seconds
    assert_kept_latency(normal, limit)
    detail = post(client, bomb).json()["detail"]
    assert "more than 100 scans" in detail and "max_jpeg_scans" in detail


def test_huge_valid_images_take_the_large_lane_and_ordinary_images_keep_their_latency(client, normal_images) -> None:
    """Two slow but valid images at once: with 2 workers and no lane, both would be taken for seconds.

    Measured: p99 0.25-0.30 s against 0.15-0.18 s without them (a core is busy decoding), and 1.84 s with
    decode_large_workers=2 (no lane).
    """
    huge = [huge_progressive_jpeg()] * 2
    with Image.open(io.BytesIO(huge[0])) as image:
        assert image.width * image.height < 40_000_000
    limit = p99_limit(client, normal_images)
    before = client.get("/metrics").text
    normal, large = stream_during(client, normal_images, huge)
    assert large.statuses == [200, 200], large.errors  # within their budget: 0.5 s + 0.15 s x 39.7 MP
    assert min(large.seconds) > 0.3  # they really were slow to decode
    assert_kept_latency(normal, limit)
    after = client.get("/metrics").text
    assert metric(after, "productrec_decode_timeouts_total") == metric(before, "productrec_decode_timeouts_total")


def other_client(client: TestClient, address: str) -> TestClient:
    """A client with another address on the same running app (it shares the first one's event loop)."""
    other = TestClient(client.app, client=(address, 50000))
    other.portal = client.portal
    return other


def test_per_client_limit_answers_429_with_retry_after(trained_repository, normal_images) -> None:
    with serving(trained_repository, max_requests_per_client=1, retry_after_s=3) as client:
        slow = threading.Thread(target=post, args=(client, huge_progressive_jpeg()))
        slow.start()
        try:
            wait_until_in_flight(client)
            response = post(client, normal_images[0])
            assert response.status_code == 429, response.text
            body = response.json()
            assert body["error"] == "too_many_requests" and "max_requests_per_client" in body["detail"]
            assert response.headers["Retry-After"] == "3"
            assert post(other_client(client, "10.0.0.2"), normal_images[0]).status_code == 200
            assert client.get("/readyz").status_code == 200  # only the predict endpoints are limited
        finally:
            slow.join(30)
        assert post(client, normal_images[0]).status_code == 200  # its slot was given back
        assert metric(client.get("/metrics").text, "productrec_http_errors_total", endpoint="/v1/predict", status="429",
                      error="too_many_requests") == 1  # fmt: skip
