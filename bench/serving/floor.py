"""The HTTP floors (``bench/http_floor.py``) under the same uvicorn and client as the service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from bench import REPO
from bench.serving.cases import TARGET_CONCURRENCY, Case
from bench.serving.cpu import process_cpu
from bench.serving.load import post_images
from bench.serving.server import Service

FLOOR_REQUESTS = 3000  # requests to the HTTP floor
FLOORS = {  # name: (uvicorn target, is a factory, what it is)
    "http": ("bench.http_floor:app", False, "bare ASGI app, canned answer (HTTP alone)"),
    "app": ("bench.http_floor:app_without_pipeline", True, "the service's app, pipeline replaced by the canned answer"),
}


def _floor_command(target: str, factory: bool) -> list[str]:
    return [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), "--app-dir", str(REPO), target]


def http_floors(
    response: bytes, photos: Sequence[bytes], case: Case, scratch: Path, requests: int = FLOOR_REQUESTS
) -> dict[str, dict]:
    """What HTTP alone costs, and the service's app without its pipeline (``bench/http_floor.py``):
    same uvicorn, same client, the target concurrency."""
    answer = scratch / f"floor-response-{case.name}.json"
    answer.write_bytes(response)
    env = {"PRODUCTREC_BENCH_FLOOR_RESPONSE": str(answer)}
    results = {}
    for name, (target, factory, title) in FLOORS.items():
        with Service(env, scratch / f"floor-{name}-{case.name}.log", command=_floor_command(target, factory)) as floor:
            post_images(floor.port, photos, TARGET_CONCURRENCY, 200, case.round_timeout_s, case.request_timeout_s)
            before = process_cpu(floor.pid)
            load = post_images(
                floor.port, photos, TARGET_CONCURRENCY, requests, case.round_timeout_s, case.request_timeout_s
            )
            server_s = process_cpu(floor.pid) - before
        count = len(load.replies)
        results[name] = {
            "title": title,
            "concurrency": TARGET_CONCURRENCY,
            "requests": count,
            "requests_per_s": count / load.wall_s,
            "server_cpu_ms_per_request": server_s / count * 1000,
            "client_cpu_ms_per_request": load.client_cpu_s / count * 1000,
        }
    return results
