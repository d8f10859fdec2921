"""Serving throughput against its limit: the real service over HTTP vs raw onnxruntime on the same ensemble.

    .venv/bin/python bench/serving.py                  # both ensembles, about 12 minutes on 2 cores
    .venv/bin/python bench/serving.py --cases small    # the Fashion-MNIST ensemble only, about 3 minutes

For each ensemble and each point (concurrency x dynamic batching on/off, and for the small
ensemble the batch endpoint at concurrency 1 and 8):

- end-to-end: ``productrec serve`` in a subprocess on a free loopback port (settings through
  ``PRODUCTREC_*``), loaded by client threads (``http.client``, one keep-alive connection each)
  posting JPEG product photos (Fashion-MNIST test images) as the raw request body to /v1/predict,
  or 16 at a time as multipart to /v1/predict/batch;
- the limit: ``Ensemble.member_probabilities`` in this process on the same images' crops, made
  beforehand by ``Ensemble.preprocess`` (no decode, no HTTP), with the session options the service
  uses, replaying exactly the batch sizes the service formed in the round before it (the fastest
  of two replays).

End-to-end and limit rounds alternate, so a busy machine slows both alike; the figure reported is
the ratio end-to-end / limit (images/s). Where the rest goes comes from three sources: the timings
each response carries, the CPU time of every thread of the service, its decode workers and the
client (``/proc``), and a py-spy profile of the service's Python code under load. The HTTP floor,
a bare ASGI app (``bench/http_floor.py``) on the same uvicorn under the same client, tells what
HTTP alone costs per request.

Writes ``bench/results/serving.json``, ``docs/img/serving-benchmark.png`` and the generated part
of ``docs/serving-benchmark.md``. Repositories are built once under ``.cache/serving-bench``
(the realistic one holds three 50,000-class ResNet-50s, 1.4 GB). Needs py-spy (``pip install
py-spy``; the ``dev`` extra) unless ``--no-profile``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.core.config import Settings  # noqa: E402
from app.contract.ranking import crop_average_probabilities, rank  # noqa: E402
from app.engine.ensemble import Ensemble  # noqa: E402
from app.contract.manifest import ENSEMBLE_FILE  # noqa: E402
from app.contract.preprocess import PreprocessConfig, decode_crops  # noqa: E402
from training.fashion_mnist import load_fashion_mnist  # noqa: E402

TARGET_RATIO = 0.85
TARGET_CONCURRENCY = 8
FLOOR_REQUESTS = 3000  # requests to the HTTP floor
LIMIT_REPLAYS = 2  # the limit of each round is the fastest of this many replays of its batch sizes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GENERATED_BEGIN = "<!-- bench/serving.py: generated from here -->"
GENERATED_END = "<!-- bench/serving.py: generated up to here -->"
BATCHING = {"on": {}, "off": {"max_batch_size": "1"}}  # off: every image runs alone
LATENCY_PARTS = {  # latency_breakdown_ms key: column title
    "http_and_json_ms": "HTTP, JSON, event-loop wait",
    "decode_wait_and_handoff_ms": "decode wait + hand-off",
    "decode_ms": "decode + crop",
    "queue_ms": "batch queue",
    "inference_ms": "inference (batch)",
    "client_latency_ms": "client latency",
}


# --------------------------------------------------------------------------------------------
# The two ensembles


@dataclass(frozen=True)
class Case:
    """One ensemble and the load put on it."""

    name: str
    title: str
    photo_size: int | None  # None: the 28x28 grayscale originals; else upscaled RGB photos
    concurrency: tuple[int, ...]
    requests: dict[int, int]  # measured requests per point, by concurrency (split over the rounds)
    rounds: int
    round_timeout_s: float  # a round stops starting requests after this long
    request_timeout_s: float
    check_batch: int  # batch size of the session-options check
    check_repeats: int  # per variant and pass
    check_passes: int
    profile_requests: int  # requests of the (untimed) profiling run at the target concurrency
    batch_endpoint_concurrency: tuple[int, ...] = ()  # /v1/predict/batch points (batching on); () for none
    batch_endpoint_items: int = 16  # images per /v1/predict/batch request


CASES = {
    "small": Case(
        name="small",
        title="Fashion-MNIST ensemble: 3 tiny timm models (ResNet, SE-ResNet, ResNeSt), 28x28 grayscale, "
        "TTA 28+32, 10 classes; 28x28 JPEGs",
        photo_size=None,
        concurrency=(1, 8, 32),
        requests={1: 300, 8: 900, 32: 1200},
        rounds=3,
        round_timeout_s=60,
        request_timeout_s=60,
        check_batch=8,
        check_repeats=10,
        check_passes=2,
        profile_requests=1500,
        batch_endpoint_concurrency=(1, 8),
        batch_endpoint_items=16,
    ),
    "realistic": Case(
        name="realistic",
        title="Realistic size: 3 ResNet-50s, RGB 224x224, 5 TTA sizes 256..320, 50,000 classes; 320x320 JPEGs",
        photo_size=320,
        concurrency=(1, 8),
        requests={1: 4, 8: 32},
        rounds=4,  # short rounds: this machine's speed drifts by tens of percent over minutes
        round_timeout_s=300,
        request_timeout_s=600,
        check_batch=1,
        check_repeats=2,
        check_passes=1,
        profile_requests=16,
    ),
}

REALISTIC_ARCHITECTURE = "resnet50"
REALISTIC_MEMBERS = 3
REALISTIC_CLASSES = 50_000
REALISTIC_INPUT = 224
REALISTIC_TTA = (256, 272, 288, 304, 320)
BUILD_MARKER = "bench-build.json"


def _build_spec(case: str) -> dict:
    if case == "small":
        return {"script": "scripts/untrained_repository.py"}
    return {
        "architecture": REALISTIC_ARCHITECTURE,
        "members": REALISTIC_MEMBERS,
        "classes": REALISTIC_CLASSES,
        "input_size": REALISTIC_INPUT,
        "tta_sizes": list(REALISTIC_TTA),
    }


def ensure_repository(case: str, cache: Path, fmnist_dir: Path) -> Path:
    """The case's model repository under ``cache``, built (untrained, through the real export) if missing."""
    repository = cache / case
    spec = _build_spec(case)
    marker = repository / BUILD_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec and (repository / ENSEMBLE_FILE).is_file():
        return repository
    if repository.exists():
        shutil.rmtree(repository)  # our own cache entry, from an older spec or an interrupted build
    tqdm.write(f"building the {case} repository in {repository} (once; cached)")
    if case == "small":
        subprocess.run(
            [sys.executable, str(ROOT / spec["script"]), str(repository), "--fmnist-dir", str(fmnist_dir)],
            check=True,
            cwd=ROOT,
        )
    else:
        _build_realistic(repository, fmnist_dir)
    marker.write_text(json.dumps(spec))
    return repository


def _build_realistic(repository: Path, fmnist_dir: Path) -> None:
    """Three untrained ResNet-50s with a 50,000-class head, exported with the ONNX parity check."""
    import timm
    import torch

    from training.export import UNTRAINED_VERSION, export_untrained, write_default_ensemble

    labels = [f"product-{index:05d}" for index in range(REALISTIC_CLASSES)]
    names = [f"{REALISTIC_ARCHITECTURE}-{member}" for member in range(REALISTIC_MEMBERS)]
    photos = [Image.open(io.BytesIO(data)) for data in product_photos(fmnist_dir, 2, CASES["realistic"].photo_size)]
    for member, name in enumerate(tqdm(names, desc="export ResNet-50 x 50K classes", unit="member")):
        torch.manual_seed(member)
        model = timm.create_model(REALISTIC_ARCHITECTURE, pretrained=False, num_classes=REALISTIC_CLASSES)
        pretrained = model.pretrained_cfg
        preprocess = PreprocessConfig(
            input_size=REALISTIC_INPUT,
            in_chans=3,
            mean=tuple(pretrained["mean"]),
            std=tuple(pretrained["std"]),
            interpolation=pretrained.get("interpolation", "bilinear"),
            tta_sizes=REALISTIC_TTA,
        )
        export_untrained(model, repository, name, REALISTIC_ARCHITECTURE, preprocess, labels, photos, "bench/serving.py")
    write_default_ensemble(repository, [(name, UNTRAINED_VERSION) for name in names], name="realistic-untrained")


def product_photos(fmnist_dir: Path, count: int, size: int | None) -> list[bytes]:
    """Fashion-MNIST test images as JPEG files: 28x28 grayscale, or upscaled to ``size`` x ``size`` RGB."""
    _, _, test_images, _ = load_fashion_mnist(fmnist_dir)
    photos = []
    for pixels in test_images[:count]:
        image = Image.fromarray(pixels)
        if size is not None:
            image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


# --------------------------------------------------------------------------------------------
# The service under test


def settings_for(repository: Path, overrides: dict[str, str]) -> tuple[Settings, dict[str, str]]:
    """The service's settings and the ``PRODUCTREC_*`` variables that give them to ``productrec serve``."""
    values = {"repository": str(repository), "provider": "cpu", **overrides}
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; see app/core/config.py")
    return Settings(**values), {f"PRODUCTREC_{name.upper()}": value for name, value in values.items()}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """``productrec serve`` (or another ASGI ``command``) in a subprocess on a free loopback port, stopped on exit."""

    def __init__(
        self, env: dict[str, str], log_path: Path, ready_timeout_s: float = 600, command: Sequence[str] | None = None
    ) -> None:
        """``command``: the server to start, to which ``--host``, ``--port`` and ``--log-level`` are added."""
        if command is None:
            executable = Path(sys.executable).with_name("productrec")
            if not executable.exists():
                raise RuntimeError(
                    f"{executable} not found: install the project (pip install -e '.[serve-cpu,train,dev]')"
                )
            command = [str(executable), "serve"]
        self.port = _free_port()
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/readyz")
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status == 200:
                    return
                if b"still loading" not in body:
                    raise RuntimeError(f"the service is up but not ready: {body.decode()}\n{self.log_tail()}")
            except (ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service was not ready within {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def decode_worker_pids(self) -> list[int]:
        """The service's child processes (its decode workers), whichever of its threads started them."""
        pids = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
        return pids

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Load generator


@dataclass
class Reply:
    latency_s: float
    batch_size: int
    timings: dict[str, float]


@dataclass
class LoadRound:
    replies: list[Reply]
    wall_s: float
    client_cpu_s: float


MULTIPART_BOUNDARY = "productrec-bench-boundary"


def batch_body(photos: Sequence[bytes]) -> bytes:
    """A multipart body with one ``files`` part per photo, as ``curl -F files=@a.jpg -F files=@b.jpg`` sends."""
    parts = []
    for index, data in enumerate(photos):
        head = (
            f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{index}.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts += [head.encode(), data, b"\r\n"]
    return b"".join([*parts, f"--{MULTIPART_BOUNDARY}--\r\n".encode()])


def post_images(
    port: int,
    photos: Sequence[bytes],
    concurrency: int,
    requests: int,
    timeout_s: float,
    request_timeout_s: float,
    on_reply: Callable[[], None] = lambda: None,
    per_request: int = 1,
) -> LoadRound:
    """POSTs of ``requests`` images from ``photos`` (cycled) from ``concurrency`` threads.

    ``per_request`` 1: each image is one raw-body POST to /v1/predict; more: that many images per
    multipart POST to /v1/predict/batch (one ``Reply`` per image, with its request's latency).
    Each thread keeps one connection; no new request starts after ``timeout_s``. Any answer other
    than 200 (or a batch item other than 200) stops the round and raises.
    """
    lock = threading.Lock()
    issued = 0
    replies: list[Reply] = []
    failures: list[str] = []
    client_cpu = [0.0] * concurrency
    deadline = time.perf_counter() + timeout_s
    if per_request == 1:
        path, headers = "/v1/predict", {"Content-Type": "image/jpeg"}
    else:
        path, headers = "/v1/predict/batch", {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"}

    def client(slot: int) -> None:
        nonlocal issued
        started_cpu = time.thread_time()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=request_timeout_s)
        try:
            while not failures and time.perf_counter() < deadline:
                with lock:
                    if issued >= requests:
                        break
                    chosen = [photos[(issued + offset) % len(photos)] for offset in range(per_request)]
                    issued += per_request
                body = chosen[0] if per_request == 1 else batch_body(chosen)
                started = time.perf_counter()
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                latency = time.perf_counter() - started
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {payload[:500].decode(errors='replace')}")
                    break
                answer = json.loads(payload)
                predictions = [answer] if per_request == 1 else [item["prediction"] for item in answer["results"]]
                if any(prediction is None for prediction in predictions):
                    failures.append(f"a batch item failed: {payload[:500].decode(errors='replace')}")
                    break
                with lock:
                    replies.extend(Reply(latency, p["batch_size"], p["timings"]) for p in predictions)
                for _ in predictions:
                    on_reply()
        except Exception as exc:  # noqa: BLE001 - reported below, in the main thread
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
            client_cpu[slot] = time.thread_time() - started_cpu

    threads = [threading.Thread(target=client, args=(slot,), name=f"load-{slot}") for slot in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed; first: {failures[0]}")
    if not replies:
        raise RuntimeError("no request completed within the round's time limit")
    return LoadRound(replies, wall, sum(client_cpu))


def batch_schedule(replies: Sequence[Reply]) -> list[int]:
    """The batch sizes the service formed: a batch of b images answers b single-image requests."""
    per_size = Counter(reply.batch_size for reply in replies)
    return [size for size, count in sorted(per_size.items()) for _ in range(-(-count // size))]


# --------------------------------------------------------------------------------------------
# The limit


class Limit:
    """Raw onnxruntime on pre-computed crops: ``Ensemble.member_probabilities``, nothing else."""

    def __init__(self, ensemble: Ensemble, photos: Sequence[bytes], settings: Settings) -> None:
        self.ensemble = ensemble
        self.tta = settings.tta
        plan = ensemble.crop_plan(self.tta)
        self._next = 0
        # The crops, made three times so as to time decoding and cropping at their best (in this
        # process: no worker, no IPC), CPU ms per image.
        passes = []
        for _ in range(3):
            started = time.process_time()
            self.crops = [decode_crops(data, plan, settings.max_image_pixels) for data in photos]
            passes.append((time.process_time() - started) / len(photos) * 1000)
        self.preprocess_cpu_ms = statistics.median(passes)

    def images(self, count: int) -> list[list[np.ndarray]]:
        """The crops of the next ``count`` images (cycling)."""
        chosen = [self.crops[(self._next + offset) % len(self.crops)] for offset in range(count)]
        self._next = (self._next + count) % len(self.crops)
        return chosen

    def run(self, schedule: Sequence[int], on_batch: Callable[[int], None] = lambda size: None) -> tuple[float, float]:
        """Wall and CPU seconds of one ``member_probabilities`` call per batch size in ``schedule``."""
        batches = [self.images(size) for size in schedule]
        started, started_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            self.ensemble.member_probabilities(batch, self.tta)
            on_batch(len(batch))
        return time.perf_counter() - started, time.process_time() - started_cpu


def session_variants(settings: Settings) -> dict[str, tuple[int, bool]]:
    """Session options worth comparing, name -> (intra-op threads, spinning); the service's among them."""
    cores = os.cpu_count() or 1
    variants = {
        "onnxruntime's defaults: a thread per core (pinned), spinning": (0, True),
        "a thread per core (pinned), no spinning": (0, False),
        **({f"{cores} threads, no spinning": (cores, False)} if cores > 1 else {}),
        "1 thread": (1, False),
    }
    service = (settings.intra_op_threads, settings.intra_op_spinning)
    if service not in variants.values():
        variants[f"{service[0]} threads, spinning {service[1]}"] = service
    return variants


def session_options_check(
    limit: Limit, settings: Settings, batch: int, repeats: int, passes: int, progress: tqdm
) -> dict:
    """Raw onnxruntime images/s at one batch size for a few session options.

    The limit uses the service's session options; this shows how they compare with the others,
    so that a poor choice cannot hide behind a ratio to an equally poor limit. One variant is
    loaded at a time (a spinning one would take the CPU from the others), in alternating order
    over ``passes`` passes.
    """
    variants = session_variants(settings)
    service_options = (settings.intra_op_threads, settings.intra_op_spinning)
    images = limit.images(batch)
    seconds: dict[str, list[float]] = defaultdict(list)
    order = list(variants)
    for _ in range(passes):
        for name in order:
            intra, spinning = variants[name]
            options = {"intra_op_threads": intra, "intra_op_spinning": spinning}
            ensemble = Ensemble.from_settings(settings.model_copy(update=options))
            ensemble.member_probabilities(images, limit.tta)  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                ensemble.member_probabilities(images, limit.tta)
                seconds[name].append(time.perf_counter() - started)
                progress.update(batch)
            del ensemble
        order.reverse()
    return {
        "batch": batch,
        "repeats": repeats * passes,
        "images_per_s": {name: batch / statistics.median(values) for name, values in seconds.items()},
        "service_variant": next(name for name, chosen in variants.items() if chosen == service_options),
    }


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc


def _cpu_of_stat(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of ``pid``."""
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu[int(task.name)] = _cpu_of_stat(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return cpu


def process_cpu(pid: int) -> float:
    try:
        return _cpu_of_stat(Path(f"/proc/{pid}/stat"))
    except FileNotFoundError:
        return 0.0


def machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (every core)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


THREAD_ROLES = {
    "MainThread": "event loop: HTTP, FastAPI, JSON, decode hand-off",
    "productrec-infer": "inference thread: onnxruntime calls, ranking",
    "productrec-decode": "threads waiting for a free decode worker",
    "asyncio": "asyncio default executor",
}
ORT_POOL = "onnxruntime pool threads"
DECODE_WORKERS = "decode workers: decode, resize, crop"
CLIENT = "load generator (client threads)"
OTHER_SERVER = "other service threads"
OTHERS = "other processes on the machine"


def python_thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name in ``pid`` (``py-spy dump``); threads absent are onnxruntime's."""
    output = subprocess.run(
        [_py_spy(), "dump", "--pid", str(pid), "--json"], check=True, capture_output=True, text=True
    ).stdout
    return {thread["os_thread_id"]: thread.get("thread_name") or "" for thread in json.loads(output)}


def thread_role(name: str) -> str:
    for prefix, role in THREAD_ROLES.items():
        if name.startswith(prefix):
            return role
    return OTHER_SERVER


class CpuMeter:
    """CPU seconds by role over an interval: service threads, decode workers, and the rest of the machine.

    Threads are named through ``py-spy dump`` (Python thread names); the threads that exist when the
    service is ready and are not Python threads are onnxruntime's pools. Without py-spy only the
    event loop (the main thread) is told apart from the other threads.
    """

    def __init__(self, service: Service, use_py_spy: bool) -> None:
        self.service = service
        self.use_py_spy = use_py_spy
        self.startup_tids = set(thread_cpu(service.pid))
        self.names: dict[int, str] = {}

    def refresh_names(self) -> None:
        """Read the Python thread names again (executors start their threads lazily)."""
        if self.use_py_spy:
            self.names = python_thread_names(self.service.pid)

    def role(self, tid: int) -> str:
        if tid in self.names:
            return thread_role(self.names[tid])
        if tid == self.service.pid:
            return THREAD_ROLES["MainThread"]
        if self.use_py_spy and tid in self.startup_tids:
            return ORT_POOL
        return OTHER_SERVER

    def snapshot(self) -> dict:
        return {
            "threads": thread_cpu(self.service.pid),
            "workers": {pid: process_cpu(pid) for pid in self.service.decode_worker_pids()},
            "bench": process_cpu(os.getpid()),
            "machine": machine_busy_s(),
        }

    def roles(self, before: dict, after: dict, client_cpu_s: float) -> dict[str, float]:
        """CPU seconds per role between two snapshots; ``client_cpu_s`` is the load generator's."""
        used: dict[str, float] = defaultdict(float)
        for tid, seconds in after["threads"].items():
            used[self.role(tid)] += seconds - before["threads"].get(tid, 0.0)
        for pid, seconds in after["workers"].items():
            used[DECODE_WORKERS] += seconds - before["workers"].get(pid, 0.0)
        service_s = sum(used.values())
        used[CLIENT] = client_cpu_s
        used[OTHERS] = max(0.0, after["machine"] - before["machine"] - service_s - (after["bench"] - before["bench"]))
        return dict(used)


# --------------------------------------------------------------------------------------------
# Profile (py-spy)


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
        ("encode_prediction", "PredictionService.encode", "app/api/schemas.py", "pydantic", "serialize_response",
         "jsonable_encoder", "json/", "JSONResponse.render"),
    ),
    ("request body: reading, limits", ("app/api/uploads.py", "starlette/requests.py")),
    ("metrics", ("app/engine/metrics.py", "app/api/middleware.py")),
    ("HTTP server: uvicorn, httptools or h11", ("h11/", "httptools/", "uvicorn/")),
    ("FastAPI/Starlette: routing, middleware, dependencies", ("starlette/", "fastapi/", "app/api/")),
    ("service: admission, gather", ("app/engine/pipeline.py",)),
]
GENERIC_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("event loop machinery (asyncio, selectors)", ("asyncio/", "selectors.py")),
    ("thread hand-off (executors, locks)", ("threading.py", "concurrent/futures/", "queue.py")),
    ("numpy", ("numpy/",)),
]


def _category(frames: Sequence[str]) -> str:
    for frame in reversed(frames):  # leaf first: the nearest frame that says what the time was for
        for name, patterns in PROFILE_CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                return name
    for frame in reversed(frames):
        for name, patterns in GENERIC_CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                return name
    return "other"


def _py_spy() -> str:
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
        by_category[_category(frames)] += count
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
    command = [_py_spy(), "record", "--pid", str(service.pid), "--gil", "--format", "raw", "--rate", str(rate)]
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


# --------------------------------------------------------------------------------------------
# One point: rounds of end-to-end and limit, alternating


@dataclass
class Point:
    case: str
    endpoint: str  # "predict" (one image per request) or "batch" (/v1/predict/batch)
    per_request: int  # images per request
    batching: str
    concurrency: int
    images: int = 0
    e2e_wall_s: float = 0.0
    limit_wall_s: float = 0.0
    limit_cpu_s: float = 0.0
    round_ratios: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def summary(self) -> dict:
        latencies = np.asarray(self.latencies_s) * 1000
        images_per_s = self.images / self.e2e_wall_s
        limit_per_s = self.images / self.limit_wall_s
        timing = {key: float(np.mean([t[key] for t in self.timings])) for key in self.timings[0]}
        client_ms = float(latencies.mean())
        breakdown = {
            "http_and_json_ms": client_ms - timing["total_ms"],
            "decode_ms": timing["decode_ms"],
            "decode_wait_and_handoff_ms": timing["total_ms"]
            - timing["decode_ms"]
            - timing["queue_ms"]
            - timing["inference_ms"],
            "queue_ms": timing["queue_ms"],
            "inference_ms": timing["inference_ms"],
            "client_latency_ms": client_ms,
        }
        return {
            "case": self.case,
            "endpoint": self.endpoint,
            "images_per_request": self.per_request,
            "batching": self.batching,
            "concurrency": self.concurrency,
            "images": self.images,
            "images_per_s": images_per_s,
            "limit_images_per_s": limit_per_s,
            "ratio": images_per_s / limit_per_s,
            "round_ratios": self.round_ratios,
            "latency_ms": {
                "p50": float(np.percentile(latencies, 50)),
                "p95": float(np.percentile(latencies, 95)),
                "p99": float(np.percentile(latencies, 99)),
                "mean": client_ms,
            },
            "mean_batch_size": float(np.mean(self.batch_sizes)),
            "batch_sizes": dict(sorted(Counter(self.batch_sizes).items())),
            "latency_breakdown_ms": breakdown,
            "cpu_ms_per_image": {role: seconds / self.images * 1000 for role, seconds in sorted(self.cpu_s.items())},
            "limit_cpu_ms_per_image": self.limit_cpu_s / self.images * 1000,
            "limit_ms_per_image": self.limit_wall_s / self.images * 1000,
            "e2e_ms_per_image": self.e2e_wall_s / self.images * 1000,
        }


def measure_point(
    service: Service,
    meter: CpuMeter,
    limit: Limit,
    photos: Sequence[bytes],
    case: Case,
    batching: str,
    concurrency: int,
    requests: int,
    progress: tqdm,
    per_request: int = 1,
) -> dict:
    """Warm up, then ``case.rounds`` rounds of (end-to-end load, limit on the batch sizes it formed).

    ``requests`` counts images; ``per_request`` > 1 posts them that many at a time to /v1/predict/batch.
    """
    endpoint = "predict" if per_request == 1 else "batch"
    progress.set_postfix_str(f"{endpoint}, batching {batching}, concurrency {concurrency}")
    warmup = post_images(
        service.port, photos, concurrency, concurrency * per_request, case.round_timeout_s, case.request_timeout_s,
        per_request=per_request,
    )
    meter.refresh_names()
    limit.run([max(batch_schedule(warmup.replies))])  # onnxruntime sizes its buffers for the largest batch
    point = Point(case.name, endpoint, per_request, batching, concurrency)
    per_round = max(per_request, requests // case.rounds)
    for _ in range(case.rounds):
        before = meter.snapshot()
        load = post_images(
            service.port, photos, concurrency, per_round, case.round_timeout_s, case.request_timeout_s,
            on_reply=lambda: progress.update(1), per_request=per_request,
        )
        after = meter.snapshot()
        for role, seconds in meter.roles(before, after, load.client_cpu_s).items():
            point.cpu_s[role] += seconds
        schedule = batch_schedule(load.replies)
        images = len(load.replies)
        # the best of a few replays: the least disturbed estimate of what raw onnxruntime can do
        limit_wall, limit_cpu = min(limit.run(schedule, on_batch=progress.update) for _ in range(LIMIT_REPLAYS))
        point.images += images
        point.e2e_wall_s += load.wall_s
        point.limit_wall_s += limit_wall * images / sum(schedule)
        point.limit_cpu_s += limit_cpu * images / sum(schedule)
        point.round_ratios.append((images / load.wall_s) / (sum(schedule) / limit_wall))
        point.latencies_s += [reply.latency_s for reply in load.replies]
        point.batch_sizes += [reply.batch_size for reply in load.replies]
        point.timings += [reply.timings for reply in load.replies]
    return point.summary()


# --------------------------------------------------------------------------------------------
# 50,000 classes: ranking as a share of model time


def ranking_cost(
    limit: Limit, model_ms_per_image: float, batch_sizes: Sequence[int] = (1, 8), repeats: int = 20
) -> dict:
    """Per image: ``rank`` (top-k + voting) and crop averaging + softmax, against the model time."""
    ensemble = limit.ensemble
    n_crops = len(ensemble.crop_groups(limit.tta)[0].sizes)
    results = {}
    for batch in batch_sizes:
        images = limit.images(batch)
        probs = ensemble.member_probabilities(images, limit.tta)
        logits = np.random.default_rng(0).standard_normal((batch * n_crops, ensemble.num_classes)).astype(np.float32)
        timed: dict[str, list[float]] = defaultdict(list)
        for _ in range(repeats):
            for name, call in (
                ("rank_vote", lambda: rank(probs, 5, "vote")),
                ("rank_mean", lambda: rank(probs, 5, "mean")),
                ("crop_average_softmax", lambda: [crop_average_probabilities(logits, n_crops) for _ in probs]),
            ):
                started = time.perf_counter()
                call()
                timed[name].append((time.perf_counter() - started) / batch * 1000)
        results[str(batch)] = {
            name: {"ms_per_image": median, "share_of_model": median / model_ms_per_image}
            for name, median in ((name, statistics.median(values)) for name, values in timed.items())
        }
    return {
        "classes": ensemble.num_classes,
        "members": len(ensemble.members),
        "model_ms_per_image": model_ms_per_image,
        "by_batch": results,
    }


# --------------------------------------------------------------------------------------------
# Running a case


SERVICE_SETTINGS_REPORTED = (
    "max_batch_size",
    "max_queue_delay_ms",
    "intra_op_threads",
    "intra_op_spinning",
    "inter_op_threads",
    "decode_workers",
)




def sample_response(port: int, photo: bytes) -> bytes:
    """One real /v1/predict answer of the service, for the HTTP floor to send back."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/v1/predict", body=photo, headers={"Content-Type": "image/jpeg"})
        return connection.getresponse().read()
    finally:
        connection.close()


FLOORS = {  # name: (uvicorn target, is a factory, what it is)
    "http": ("http_floor:app", False, "bare ASGI app, canned answer (HTTP alone)"),
    "app": ("http_floor:app_without_pipeline", True, "the service's app, pipeline replaced by the canned answer"),
}


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
        command = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []),
                   "--app-dir", str(ROOT / "bench"), target]
        with Service(env, scratch / f"floor-{name}-{case.name}.log", command=command) as floor:
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


def run_case(case: Case, args: argparse.Namespace, overrides: dict[str, str], scratch: Path) -> dict:
    """Every point of one ensemble, its session-options check, profile, HTTP floor and (50K classes) ranking cost."""
    repository = ensure_repository(case.name, args.cache, args.fmnist_dir)
    photos = product_photos(args.fmnist_dir, args.photos if case.photo_size is None else 32, case.photo_size)
    concurrency = tuple(args.concurrency or case.concurrency)
    requests = {c: args.requests or case.requests.get(c, case.requests[max(case.requests)]) for c in concurrency}
    batch_points = {c: requests.get(c, case.requests[max(case.requests)]) for c in case.batch_endpoint_concurrency}
    settings, _ = settings_for(repository, overrides)
    tqdm.write(f"[{case.name}] loading the reference ensemble (the service's session options)")
    limit = Limit(Ensemble.from_settings(settings), photos, settings)
    points, profile = [], None
    total = case.check_batch * case.check_repeats * case.check_passes * len(session_variants(settings))
    per_image = 1 + LIMIT_REPLAYS  # end-to-end, then the limit's replays
    total += per_image * sum(requests[c] // case.rounds * case.rounds for c in concurrency) * len(BATCHING)
    total += per_image * sum(n // case.rounds * case.rounds for n in batch_points.values())
    with tqdm(total=total, desc=f"{case.name}: images (limit + end-to-end)", unit="img", mininterval=1) as progress:
        progress.set_postfix_str("session options")
        session_check = session_options_check(
            limit, settings, case.check_batch, case.check_repeats, case.check_passes, progress
        )
        for batching, batching_overrides in BATCHING.items():
            service_settings, env = settings_for(repository, {**overrides, **batching_overrides})
            reported = service_settings.model_dump(include=set(SERVICE_SETTINGS_REPORTED))
            with Service(env, scratch / f"service-{case.name}-{batching}.log") as service:
                meter = CpuMeter(service, use_py_spy=not args.no_profile)
                runs = [(c, requests[c], 1) for c in concurrency]
                if batching == "on":
                    runs += [(c, n, case.batch_endpoint_items) for c, n in batch_points.items()]
                for c, images, per_request in runs:
                    point = measure_point(
                        service, meter, limit, photos, case, batching, c, images, progress, per_request
                    )
                    point["settings"] = reported
                    points.append(point)
                    progress.write(
                        f"[{case.name}] {point['endpoint']:7} batching {batching:3} c={c:2}: "
                        f"{point['images_per_s']:8.1f} img/s, limit {point['limit_images_per_s']:8.1f} img/s, "
                        f"ratio {point['ratio']:.2f}, p50 {point['latency_ms']['p50']:.0f} ms, "
                        f"mean batch {point['mean_batch_size']:.1f}"
                    )
                if batching == "on":
                    response = sample_response(service.port, photos[0])
                    if case.name in args.profile_cases and not args.no_profile:
                        progress.set_postfix_str("profiling (not timed)")
                        profile_path = args.cache / f"profile-{case.name}.txt"
                        profile = profile_service(
                            service, photos, case, TARGET_CONCURRENCY, case.profile_requests, profile_path
                        )
        progress.set_postfix_str("HTTP floors")
        floors = http_floors(response, photos, case, scratch)
    result = {
        "case": case.name,
        "title": case.title,
        "repository": os.path.relpath(repository, ROOT),
        "photo_bytes_mean": float(np.mean([len(photo) for photo in photos])),
        "members": [member.manifest.name for member in limit.ensemble.members],
        "tta_sizes": list(limit.ensemble.crop_groups(settings.tta)[0].sizes),
        "classes": limit.ensemble.num_classes,
        "session_options": session_check,
        "points": points,
        "profile": profile,
        "http_floors": floors,
        "preprocess_cpu_ms_per_image": limit.preprocess_cpu_ms,
    }
    if case.name == "realistic" or args.ranking_all:
        target = next((p for p in points if _is_target(p)), points[0])
        result["ranking"] = ranking_cost(limit, target["limit_ms_per_image"])
    return result


# --------------------------------------------------------------------------------------------
# Report: JSON, plot, markdown


def _is_target(point: dict) -> bool:
    return point["endpoint"] == "predict" and point["batching"] == "on" and point["concurrency"] == TARGET_CONCURRENCY


def _endpoint(point: dict) -> str:
    if point["endpoint"] == "batch":
        return f"batch x{point['images_per_request']}"
    return "predict"


def _point_label(point: dict, separator: str = "\n") -> str:
    what = _endpoint(point).replace(" ", separator) if point["endpoint"] == "batch" else point["batching"]
    return f"c={point['concurrency']}{separator}{what}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    figure, axes = plt.subplots(len(cases), 3, figsize=(15, 4.2 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        points = case["points"]
        labels = [_point_label(point) for point in points]
        x = np.arange(len(points))
        throughput, ratio, latency = axes[row]
        throughput.bar(x - 0.2, [p["images_per_s"] for p in points], 0.4, label="service end-to-end")
        throughput.bar(x + 0.2, [p["limit_images_per_s"] for p in points], 0.4, label="limit: raw onnxruntime")
        throughput.set_ylabel("images/s")
        throughput.set_title(f"{case['case']}: throughput")
        throughput.legend(fontsize=8)
        colours = ["tab:green" if p["ratio"] >= TARGET_RATIO else "tab:red" for p in points]
        ratio.bar(x, [p["ratio"] for p in points], 0.6, color=colours)
        ratio.errorbar(
            x,
            [p["ratio"] for p in points],
            yerr=[
                [p["ratio"] - min(p["round_ratios"]) for p in points],
                [max(p["round_ratios"]) - p["ratio"] for p in points],
            ],
            fmt="none",
            ecolor="black",
            capsize=3,
        )
        ratio.axhline(TARGET_RATIO, color="black", linestyle="--", linewidth=1, label=f"target {TARGET_RATIO}")
        if case.get("http_floors"):
            bounded = [i for i, p in enumerate(points) if p["batching"] == "on" and p["concurrency"] == TARGET_CONCURRENCY]
            ratio.scatter(
                bounded, [ratio_bound(case, points[i]) for i in bounded], marker="_", s=600, color="black",
                label="bound: limit / (limit + HTTP floor + decoding)",
            )
        ratio.set_ylim(0, max(1.1, max(p["ratio"] for p in points) * 1.1))
        ratio.set_ylabel("end-to-end / limit")
        ratio.set_title(f"{case['case']}: ratio to the limit (bars: min..max over rounds)")
        ratio.legend(fontsize=8)
        for key, offset in (("p50", -0.25), ("p95", 0.0), ("p99", 0.25)):
            latency.bar(x + offset, [p["latency_ms"][key] for p in points], 0.25, label=key)
        latency.set_yscale("log")
        latency.set_ylabel("latency (ms, log)")
        latency.set_title(f"{case['case']}: client latency")
        latency.legend(fontsize=8)
        for axis in (throughput, ratio, latency):
            axis.set_xticks(x, labels, fontsize=8)
    figure.suptitle(f"Serving vs raw onnxruntime on {results['machine']['cpus']} CPUs (batching on/off, concurrency c)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def unavoidable_ms(case: dict, point: dict) -> float:
    """CPU ms per image that any HTTP service spends besides the model: HTTP floor (server + client), decoding."""
    floor = case["http_floors"]["http"]
    per_request = floor["server_cpu_ms_per_request"] + floor["client_cpu_ms_per_request"]
    return per_request / point["images_per_request"] + case["preprocess_cpu_ms_per_image"]


def ratio_bound(case: dict, point: dict) -> float:
    """The best ratio a CPU-bound service could reach at ``point``: model CPU over model + unavoidable CPU."""
    model = point["limit_cpu_ms_per_image"]
    return model / (model + unavoidable_ms(case, point))


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict, plot_path: Path, doc_path: Path) -> str:
    """The generated part of docs/serving-benchmark.md."""
    machine = results["machine"]
    lines = [
        GENERATED_BEGIN,
        "",
        f"Measured {results['date']} on {machine['cpus']} CPUs ({machine['processor']}), load average "
        f"{machine['loadavg_start']} at the start; commit {results['commit']}. Command:",
        "",
        f"    {results['command']}",
        "",
        f"![serving benchmark]({os.path.relpath(plot_path, doc_path.parent)})",
        "",
    ]
    for case in results["cases"]:
        lines += [f"### {case['title']}", ""]
        points = case["points"]
        settings = points[0]["settings"]
        lines += [
            f"Service settings: intra-op threads {settings['intra_op_threads']} (0 = one per core), spinning "
            f"{settings.get('intra_op_spinning', 'onnxruntime default')}, "
            f"decode workers {settings['decode_workers']}, batching on = up to {settings['max_batch_size']} "
            f"images within {settings['max_queue_delay_ms']:g} ms, off = max_batch_size 1. "
            f"JPEGs of {case['photo_bytes_mean'] / 1024:.1f} KiB on average.",
            "",
        ]
        check = case["session_options"]
        best = max(check["images_per_s"].values())
        lines += [
            f"Raw onnxruntime at batch {check['batch']} with a few session options (median of {check['repeats']}, "
            "interleaved): the limit below uses the service's (marked), so it is only as good as they are.",
            "",
        ]
        lines += _table(
            ["session options", "images/s", "of the best"],
            [
                [
                    name + (" **(service)**" if name == check["service_variant"] else ""),
                    f"{value:.1f}",
                    f"{value / best:.2f}",
                ]
                for name, value in check["images_per_s"].items()
            ],
        )
        lines.append("")
        lines += _table(
            ["endpoint", "batching", "concurrency", "images", "end-to-end img/s", "limit img/s", "ratio",
             "ratio min..max", "p50 ms", "p95 ms", "p99 ms", "mean batch"],
            [
                [_endpoint(p), p["batching"], str(p["concurrency"]), str(p["images"]), f"{p['images_per_s']:.1f}",
                 f"{p['limit_images_per_s']:.1f}", f"**{p['ratio']:.2f}**",
                 f"{min(p['round_ratios']):.2f}..{max(p['round_ratios']):.2f}",
                 f"{p['latency_ms']['p50']:.1f}", f"{p['latency_ms']['p95']:.1f}", f"{p['latency_ms']['p99']:.1f}",
                 f"{p['mean_batch_size']:.1f}"]
                for p in points
            ],
        )
        lines += [
            "",
            "Where a request's time goes (mean ms per image, from the timings each response carries; for the "
            "batch endpoint, the client latency is that of the request carrying the image):",
            "",
        ]
        lines += _table(
            ["endpoint", "batching", "concurrency", *LATENCY_PARTS.values()],
            [
                [_endpoint(p), p["batching"], str(p["concurrency"])]
                + [f"{p['latency_breakdown_ms'][key]:.2f}" for key in LATENCY_PARTS]
                for p in points
            ],
        )
        roles = sorted(
            {role for p in points for role, ms in p["cpu_ms_per_image"].items() if ms >= 0.005},
            key=lambda role: -max(p["cpu_ms_per_image"].get(role, 0.0) for p in points),
        )
        lines += ["", "Where the CPU goes (CPU ms per image, /proc; the limit's own CPU per image last):", ""]
        lines += _table(
            ["role"] + [_point_label(p, " ") for p in points],
            [[role] + [f"{p['cpu_ms_per_image'].get(role, 0.0):.2f}" for p in points] for role in roles]
            + [["**limit (raw onnxruntime)**"] + [f"{p['limit_cpu_ms_per_image']:.2f}" for p in points]],
        )
        profile = case.get("profile")
        if profile:
            lines += [
                "",
                f"Profile (py-spy, samples of the thread holding the GIL in the service, batching on, concurrency "
                f"{profile['concurrency']}, {profile['images']} images): the GIL was held "
                f"**{profile['gil_busy_share']:.0%}** of the time, "
                f"{profile['python_ms_per_image']:.2f} ms of Python per image "
                f"({profile['images_per_s_under_profiler']:.0f} img/s under the profiler).",
                "",
            ]
            lines += _table(["where (nearest frame that says what for)", "share of GIL time"],
                            [[name, f"{share:.1%}"] for name, share in profile["categories"].items()])
            lines += ["", "Top leaf functions:", ""]
            top = list(profile["top_functions"].items())[:10]
            lines += _table(["function", "share"], [[f"`{name}`", f"{share:.1%}"] for name, share in top])
        floors = case.get("http_floors")
        if floors:
            target = next((p for p in points if _is_target(p)), None)
            lines += [
                "",
                "What HTTP costs without the rest (`bench/http_floor.py`, same uvicorn, same client, concurrency "
                f"{TARGET_CONCURRENCY}, measured in the same run), against the service itself:",
                "",
            ]
            rows = [
                [floor["title"], _rate(floor["requests_per_s"]), f"{floor['server_cpu_ms_per_request']:.2f}",
                 f"{floor['client_cpu_ms_per_request']:.2f}"]
                for floor in floors.values()
            ]
            if target:
                server = sum(ms for role, ms in target["cpu_ms_per_image"].items() if role not in (CLIENT, OTHERS))
                rows.append(["the service (decode, batching, inference included)", _rate(target["images_per_s"]),
                             f"{server:.2f}", f"{target['cpu_ms_per_image'].get(CLIENT, 0.0):.2f}"])
            lines += _table(["server", "requests/s", "server CPU ms/request", "client CPU ms/request"], rows)
            lines += [
                "",
                "Decoding and cropping one photo (`decode_crops` in-process, no worker, no IPC) costs "
                f"{case['preprocess_cpu_ms_per_image']:.2f} ms of CPU. The limit excludes it and HTTP by definition; "
                "with the cores busy, a service that added nothing else could reach at most limit CPU / (limit CPU + "
                "HTTP floor + decoding), per image:",
                "",
            ]
            lines += _table(
                ["point", "limit CPU ms/image", "HTTP floor + decoding ms/image", "bound on the ratio",
                 "measured ratio"],
                [
                    [_point_label(p, " "), f"{p['limit_cpu_ms_per_image']:.2f}", f"{unavoidable_ms(case, p):.2f}",
                     f"{ratio_bound(case, p):.2f}", f"{p['ratio']:.2f}"]
                    for p in points
                    if p["batching"] == "on" and p["concurrency"] == TARGET_CONCURRENCY
                ],
            )
        ranking = case.get("ranking")
        if ranking:
            lines += [
                "",
                f"{ranking['classes']:,} classes, {ranking['members']} members: per-image cost against the model time "
                f"({ranking['model_ms_per_image']:.1f} ms per image: the limit at the batch sizes of batching on, "
                f"concurrency {TARGET_CONCURRENCY}):",
                "",
            ]
            lines += _table(
                ["batch", "step", "ms per image", "share of model time"],
                [[batch, name, f"{cost['ms_per_image']:.3f}", f"{cost['share_of_model']:.3%}"]
                 for batch, steps in ranking["by_batch"].items() for name, cost in steps.items()],
            )
        lines.append("")
    lines.append(GENERATED_END)
    return "\n".join(lines)


def write_doc(path: Path, section: str) -> None:
    """Replace the generated part of ``path`` (or create the file), keeping what people wrote around it."""
    if path.exists() and GENERATED_BEGIN in (text := path.read_text()):
        head, rest = text.split(GENERATED_BEGIN, 1)
        tail = rest.split(GENERATED_END, 1)[1] if GENERATED_END in rest else ""
        path.write_text(head + section + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Serving benchmark\n\n" + section + "\n")


# --------------------------------------------------------------------------------------------


def _git_commit() -> str:
    try:
        def git(*arguments: str) -> str:
            return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout

        dirty = " + uncommitted changes in app/" if git("status", "--porcelain", "app").strip() else ""
        return git("rev-parse", "--short", "HEAD").strip() + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to measure")
    what.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="ensembles to measure")
    what.add_argument(
        "--concurrency", nargs="+", type=int, help="client concurrencies (default per case: 1 8 32 / 1 8)"
    )
    what.add_argument("--requests", type=int, help="measured requests per point (default per case and concurrency)")
    what.add_argument("--photos", type=int, default=256, help="distinct Fashion-MNIST test images posted (small case)")
    what.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE",
        help="a service setting (app/core/config.py) for the service and the limit alike, e.g. intra_op_threads=1",
    )
    what.add_argument("--no-profile", action="store_true", help="skip py-spy (thread roles then coarse)")
    what.add_argument("--profile-cases", nargs="*", default=["small"], help="cases profiled with py-spy")
    what.add_argument("--ranking-all", action="store_true", help="time ranking for every case, not only realistic")
    what.add_argument(
        "--report-only", action="store_true", help="measure nothing: write the plot and the doc from --out's JSON"
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    paths.add_argument(
        "--cache", type=Path, default=ROOT / ".cache" / "serving-bench", help="model repositories, profiles"
    )
    paths.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    paths.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "serving-benchmark.png")
    paths.add_argument("--doc", type=Path, default=ROOT / "docs" / "serving-benchmark.md", help="'-': do not write")
    args = parser.parse_args(argv)
    for setting in args.setting:
        if "=" not in setting:
            parser.error(f"--setting {setting!r}: expected NAME=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(setting.split("=", 1) for setting in args.setting)
    if "repository" in overrides:
        raise SystemExit("--setting repository=...: each case has its own repository (see --cache)")
    if args.report_only:
        results = json.loads(args.out.read_text())
        plot(results, args.plot)
        write_doc(args.doc, markdown(results, args.plot, args.doc))
        print(f"wrote {args.plot}, {args.doc} from {args.out}")
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_start": " ".join(f"{value:.1f}" for value in os.getloadavg()),
        },
        "setting_overrides": overrides,
        "target": {"ratio": TARGET_RATIO, "concurrency": TARGET_CONCURRENCY, "batching": "on"},
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        for name in args.cases:
            results["cases"].append(run_case(CASES[name], args, overrides, Path(scratch)))
    results["machine"]["loadavg_end"] = " ".join(f"{value:.1f}" for value in os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    if str(args.doc) != "-":
        write_doc(args.doc, markdown(results, args.plot, args.doc))
    print(f"wrote {args.out}, {args.plot}" + ("" if str(args.doc) == "-" else f", {args.doc}"))
    for case in results["cases"]:
        for point in filter(_is_target, case["points"]):
            verdict = "meets" if point["ratio"] >= TARGET_RATIO else "MISSES"
            print(f"{case['case']}: ratio {point['ratio']:.2f} at the target point {verdict} the target {TARGET_RATIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
