"""CPU time by role over an interval, from /proc: service threads, decode workers, client, the rest."""

from __future__ import annotations

import json
import os
import subprocess
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
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


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
