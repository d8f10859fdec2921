"""CPU time by role over an interval, from /proc: service threads, decode workers, client, the rest."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench.serving.profile import py_spy
from bench.serving.server import Service

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
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
    """CPU seconds of process ``pid`` (0 once it has gone)."""
    try:
        return _cpu_of_stat(Path(f"/proc/{pid}/stat"))
    except FileNotFoundError:
        return 0.0


def machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (every core)."""
    total, idle = machine_cpu_ticks()
    return (total - idle) / CLOCK_TICKS


def machine_cpu_ticks() -> tuple[int, int]:
    """(all, idle) clock ticks of every core since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values), values[3] + values[4]


class IdleSampler:
    """The machine's idle share between any two moments of the block, from /proc/stat read every ``interval_s``.

    Use: ``with IdleSampler() as idle: ...`` then ``idle.share(start, end)`` with ``time.perf_counter()`` moments.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="idle-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), *machine_cpu_ticks()))
            if self._stop.wait(self.interval_s):
                self.samples.append((time.perf_counter(), *machine_cpu_ticks()))
                return

    def __enter__(self) -> "IdleSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def share(self, start: float, end: float) -> float | None:
        """Idle ticks over all ticks between the samples nearest inside [start, end]; None under two samples."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(inside) < 2 or inside[-1][1] == inside[0][1]:
            return None
        return (inside[-1][2] - inside[0][2]) / (inside[-1][1] - inside[0][1])


def python_thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name in ``pid`` (``py-spy dump``); threads absent are onnxruntime's."""
    output = subprocess.run(
        [py_spy(), "dump", "--pid", str(pid), "--json"], check=True, capture_output=True, text=True
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
