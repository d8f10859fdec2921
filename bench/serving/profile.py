"""Where the service's Python time goes under load: py-spy samples of the thread holding the GIL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from bench.serving.cases import Case
from bench.serving.load import post_images
from bench.serving.server import Service

# A sample counts for the first category, leaf first, whose patterns a frame contains. The
# patterns are paths and qualified names of the app (app/engine, app/contract, app/api) and its
# libraries, as py-spy writes frames: "Pipeline.result (app/engine/pipeline.py:218)".
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "decode hand-off: IPC to the workers, crops copied back",
        ("app/engine/decode_pool.py", "app/engine/decode_worker.py", "multiprocessing/"),
    ),
    ("ensemble run: onnxruntime call, crops concatenated", ("app/engine/ensemble.py", "onnxruntime/")),
    ("ranking: softmax, top-k, voting", ("app/contract/ranking.py",)),
    ("dynamic batcher", ("app/engine/batcher.py",)),
    (
        "response: schema objects and JSON",
        ("Pipeline.result", "app/api/schemas.py", "pydantic", "serialize_response", "jsonable_encoder", "json/",
         "JSONResponse.render"),
    ),
    ("request body: reading, limits", ("app/api/uploads.py", "starlette/requests.py")),
    ("metrics", ("app/engine/metrics.py", "app/api/middleware.py", "prometheus_client/")),
    ("HTTP server: uvicorn, httptools or h11", ("h11/", "httptools/", "uvicorn/")),
    ("FastAPI/Starlette: routing, middleware, dependencies", ("starlette/", "fastapi/", "app/api/")),
    ("service: admission, gather", ("app/engine/pipeline.py",)),
]
GENERIC_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("event loop machinery (asyncio, selectors)", ("asyncio/", "selectors.py")),
    ("thread hand-off (executors, locks)", ("threading.py", "concurrent/futures/", "queue.py")),
    ("numpy", ("numpy/",)),
]


def _first_match(frames: Sequence[str], categories: list[tuple[str, tuple[str, ...]]]) -> str | None:
    for frame in reversed(frames):  # leaf first: the nearest frame that says what the time was for
        for name, patterns in categories:
            if any(pattern in frame for pattern in patterns):
                return name
    return None


def category(frames: Sequence[str]) -> str:
    """The category of one stack (root first): the app's own categories, else generic ones, else "other"."""
    return _first_match(frames, PROFILE_CATEGORIES) or _first_match(frames, GENERIC_CATEGORIES) or "other"


def py_spy() -> str:
    """The py-spy executable, next to this Python first."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy not found: pip install py-spy (in the dev extra), or run with --no-profile")
    return found


def summarise_profile(raw: str, wall_s: float, rate: int, images: int) -> dict:
    """Categories and top functions of a ``py-spy record --gil --format raw`` profile."""
    by_category: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first entry names the process
        samples += count
        by_category[category(frames)] += count
        by_function[frames[-1] if frames else "?"] += count
    if samples == 0:
        raise RuntimeError("py-spy recorded no samples")
    gil_s = samples / rate
    return {
        "samples": samples,
        "rate_hz": rate,
        "wall_s": wall_s,
        "images": images,
        "gil_busy_share": gil_s / wall_s,
        "python_ms_per_image": gil_s / images * 1000,
        "categories": {name: count / samples for name, count in by_category.most_common()},
        "top_functions": {name: count / samples for name, count in by_function.most_common(15)},
    }


def profile_service(
    service: Service, photos: Sequence[bytes], case: Case, concurrency: int, requests: int, out: Path, rate: int = 200
) -> dict:
    """Where the service's Python time goes under load: py-spy samples of the thread holding the GIL."""
    out.unlink(missing_ok=True)
    command = [py_spy(), "record", "--pid", str(service.pid), "--gil", "--format", "raw", "--rate", str(rate)]
    recorder = subprocess.Popen([*command, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # py-spy attaches
    if recorder.poll() is not None:
        raise RuntimeError(f"py-spy could not attach to the service: {recorder.communicate()[0]}")
    started = time.perf_counter()
    load = post_images(service.port, photos, concurrency, requests, case.round_timeout_s, case.request_timeout_s)
    wall = time.perf_counter() - started
    recorder.send_signal(signal.SIGINT)
    output, _ = recorder.communicate(timeout=120)
    if not out.is_file():
        raise RuntimeError(f"py-spy wrote no profile: {output}")
    summary = summarise_profile(out.read_text(), wall, rate, len(load.replies))
    summary["concurrency"] = concurrency
    summary["images_per_s_under_profiler"] = len(load.replies) / load.wall_s
    return summary
