"""The service under test: ``productrec serve`` (or another ASGI server) in a subprocess on a free port."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from app.core.config import Settings
from bench import REPO


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


def _productrec_serve() -> list[str]:
    executable = Path(sys.executable).with_name("productrec")
    if not executable.exists():
        raise RuntimeError(f"{executable} not found: install the project (pip install -e '.[serve-cpu,train,dev]')")
    return [str(executable), "serve"]


class Service:
    """``productrec serve`` (or another ASGI ``command``) in a subprocess on a free loopback port, stopped on exit."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        ready_timeout_s: float = 600,
        command: Sequence[str] | None = None,
        ready_path: str = "/readyz",
        own_group: bool = False,
    ) -> None:
        """``command``: the server to start, to which ``--host``, ``--port`` and ``--log-level`` are added;
        ``ready_path``: answers 200 once it is ready (another server's, e.g. LitServe's /health);
        ``own_group``: start it in a process group of its own, killed whole on stop (a server whose
        children outlive it, as LitServe's do)."""
        self.ready_path = ready_path
        self.own_group = own_group
        command = command or _productrec_serve()
        self.port = _free_port()
        self.log_path = log_path
        self._log = log_path.open("w")
        # This checkout's app, not whatever the environment's editable install points at (another worktree)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, "PYTHONPATH": path, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=own_group,
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
                connection.request("GET", self.ready_path)
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status == 200:
                    return
                if self.ready_path == "/readyz" and b"still loading" not in body:
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

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP; its whole group where it has one) and continued on exit: an idle
        server that polls (LitServe's workers do) takes no CPU from the one being measured."""
        self._signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.process.pid, number)
            else:
                self.process.send_signal(number)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.own_group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group is the server's: its pgid is its pid
            except ProcessLookupError:
                pass
        self._log.close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
