"""Helpers shared by the serving tests (test_api*.py, test_score.py): clients, images, metrics."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.contract.preprocess import decode_image, widest_in_chans
from app.core.config import Settings
from app.engine.ensemble import Ensemble
from app.main import create_app

FAST_SETTINGS: dict[str, Any] = {"decode_workers": 2, "max_queue_delay_ms": 2.0, "intra_op_threads": 1}


def settings_for(repository: Path, **overrides: Any) -> Settings:
    """Settings for tests: no environment, small thread counts, the given overrides."""
    return Settings(_env_prefix="PRODUCTREC_TEST_UNUSED_", repository=repository, **{**FAST_SETTINGS, **overrides})


@contextmanager
def serving(repository: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient with the lifespan run (ensemble loaded, workers started) and shut down after."""
    with TestClient(create_app(settings_for(repository, **overrides))) as client:
        yield client


@contextmanager
def productrec_serve(repository: Path, log_dir: Path, options: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """``productrec serve`` in a subprocess on a free port: yields its base URL once ready, stops it (SIGINT) after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "app.cli", "serve", "--repository", str(repository), "--port", str(port)]
    log_path = log_dir / "serve.log"
    with open(log_path, "w+") as log:
        server = subprocess.Popen(
            [*command, "--log-level", "warning", *options], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, f"productrec serve exited: {log_path.read_text()}"
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the service never became ready: {log_path.read_text()}"
                time.sleep(0.2)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0, log_path.read_text()


def encode(image: Image.Image, format: str = "PNG", **save_options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **save_options)
    return buffer.getvalue()


def noise_image(seed: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> Image.Image:
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@lru_cache
def slow_png(width: int = 9000, height: int = 6000) -> bytes:
    """~150 KB that cost about a second of CPU to decode and crop (a CPU bomb within the pixel limit).

    RGB, so that decoding takes well over the tests' decode timeouts even on a fast, idle machine.
    """
    return encode(Image.new("RGB", (width, height)), "PNG", compress_level=9)


@lru_cache
def scan_bomb_jpeg(width: int = 6000, height: int = 6000, scans: int = 20_000) -> bytes:
    """A progressive grey JPEG of ``width`` x ``height`` made of ``scans`` empty scans (~10 bytes each).

    libjpeg walks every block of the frame once per scan: the default 6000x6000 one (36 MP, under the
    40 MP limit, ~200 KB) costs about 2 ms per scan, some 40 s of CPU in all.
    """
    small = encode(Image.new("L", (16, 16), 128), "JPEG", progressive=True)
    header = bytearray(small[: small.index(b"\xff\xda")])  # up to the first scan
    sof = header.index(b"\xff\xc2")
    struct.pack_into(">HH", header, sof + 5, height, width)
    empty_dc_scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x00, 0, 0, 0)  # component 1, Ss=Se=Ah=Al=0
    return bytes(header) + empty_dc_scan * scans + b"\xff\xd9"


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        if "le" in found and "le" in labels:  # bucket bounds compare as numbers ("1" is "1.0")
            found["le"], labels = str(float(found["le"])), {**labels, "le": str(float(labels["le"]))}
        if found == {key: str(value) for key, value in labels.items()}:
            return float(match["value"])
    return 0.0


def wait_until_in_flight(client: TestClient, images: int = 1, timeout_s: float = 10.0) -> None:
    """Wait until the service has ``images`` images admitted and not yet answered (from /metrics)."""
    deadline = time.perf_counter() + timeout_s
    while metric(client.get("/metrics").text, "productrec_images_in_flight") < images:
        assert time.perf_counter() < deadline, f"fewer than {images} images got in flight"
        time.sleep(0.01)


def assert_same_ranking(labels: list[dict], indices, scores, votes, tolerance: float = 1e-5) -> None:
    """``labels`` (from a response) rank like (indices, scores, votes), up to float noise.

    Different batch compositions change onnxruntime's floats in the last bits, so two labels whose
    scores are within ``tolerance`` (weakly trained members have such near-ties) may swap places.
    """
    indices, scores = list(indices), np.asarray(scores, dtype=np.float64)
    assert [label["votes"] for label in labels] == list(votes)
    np.testing.assert_allclose([label["score"] for label in labels], scores, rtol=0, atol=tolerance)
    for position, label in enumerate(labels):
        if label["index"] != indices[position]:
            neighbours = scores[max(0, position - 1) : position + 2]
            assert np.ptp(neighbours) < 2 * tolerance, f"labels differ at rank {position}: {labels} vs {indices}"


def evaluate_repository(
    repository: Path, images: list[bytes | Image.Image], tta: bool = True, top_k: int = 5
) -> tuple[np.ndarray, list]:
    """``[M, B, K]`` member probabilities and the rankings of the service's engine, without the service.

    Encoded images are decoded once in the widest channel mode any member needs, as the decode workers do.
    """
    ensemble = Ensemble.load(Path(repository), "cpu")
    in_chans = widest_in_chans(ensemble.crop_plan(tta=True))
    decoded = [decode_image(image, in_chans, 10**9) if isinstance(image, bytes) else image for image in images]
    return ensemble.predict(decoded, top_k=top_k, tta=tta)
