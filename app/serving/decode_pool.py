"""Decoding and cropping in worker processes that are killed and replaced when they take too long.

A few hundred KB of crafted image can cost seconds to minutes of CPU inside a
decoder, and a thread stuck in C code cannot be interrupted. Each job runs in
a worker process (``app.serving.decode_worker``, Pillow and NumPy only); when
it has not answered within ``timeout_s`` the process is killed, a fresh one
takes its place and the caller gets ``DecodeTimeoutError``.

Workers are plain subprocesses talking over a socket pair, not
``multiprocessing`` children: no fork of the threaded service process, and no
re-import of the caller's ``__main__``.

``decode`` blocks and is thread-safe; the service awaits ``decode_async``,
which runs it on the pool's own threads (one per worker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from queue import Queue
from typing import Callable

import numpy as np

from app.preprocess import CropPlan
from app.serving.decode_worker import READY, CropBuffer

log = logging.getLogger("productrec.decode")

WORKER_START_TIMEOUT_S = 60.0
# Crops of one image up to this size come back through shared memory, larger ones pickled
# (virtual size: only the pages written are allocated; 5 RGB 224x224 crops are 3 MiB).
SHARED_BUFFER_BYTES = 64 * 1024 * 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class DecodeTimeoutError(Exception):
    """Decoding one image took longer than the decode timeout (the file is refused)."""


class DecodeCrashedError(Exception):
    """The worker died while decoding (the file is refused; the worker is replaced)."""


class DecodePoolClosedError(RuntimeError):
    """The pool is shut down."""


@dataclass(frozen=True)
class DecodedCrops:
    crops: list[np.ndarray]  # one [n_sizes, C, H, W] array per crop group
    seconds: float  # decode + crop time inside the worker


class _Worker:
    """One worker subprocess, our end of its socket, and the buffer its crops come back in."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.buffer = CropBuffer.create(SHARED_BUFFER_BYTES)
        arguments, fds = [str(theirs.fileno())], [theirs.fileno()]
        if self.buffer is not None:
            arguments += [str(self.buffer.fd), str(self.buffer.size)]
            fds.append(self.buffer.fd)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.serving.decode_worker", *arguments],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self.connection = Connection(ours.detach())
        self.ready = False

    def crops(self, answer: tuple) -> list[np.ndarray]:
        """The crops of an ("ok", crops, s) or ("shared", layout, s) answer."""
        if answer[0] == "shared":
            assert self.buffer is not None
            return self.buffer.read(answer[1])
        return answer[1]

    def wait_ready(self) -> None:
        """Wait for the worker's imports to finish, so they never count against a job's timeout."""
        if self.ready:
            return
        if not self.connection.poll(WORKER_START_TIMEOUT_S) or self.connection.recv() != (READY,):
            raise RuntimeError(f"decode worker pid {self.process.pid} did not start")
        self.ready = True

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.connection.send(None)
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.connection.close()
        if self.buffer is not None:
            self.buffer.close()


class DecodePool:
    """``workers`` decode processes with a per-image time limit."""

    def __init__(self, workers: int, timeout_s: float, on_restart: Callable[[], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self._on_restart = on_restart
        self._idle: Queue[_Worker] = Queue()
        self._workers = [_Worker() for _ in range(workers)]
        for worker in self._workers:
            worker.wait_ready()
            self._idle.put(worker)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="productrec-decode")
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def decode(self, data: bytes, plan: CropPlan, max_pixels: int) -> DecodedCrops:
        """Decode and crop one image in a worker; blocks until a worker is free and has answered.

        Raises ``ImageDecodeError``/``ImageTooLargeError`` for bad images, ``DecodeTimeoutError``
        when the worker took longer than the timeout (it is then replaced).
        """
        if self._closed:
            raise DecodePoolClosedError("the decode pool is shut down")
        worker = self._idle.get()
        if worker.process.poll() is not None:  # died while idle (e.g. the OOM killer): not this image's fault
            worker = self._replace(worker, f"exited with status {worker.process.returncode}")
        try:
            worker.wait_ready()
            worker.connection.send((data, list(plan), max_pixels))
            if not worker.connection.poll(self.timeout_s):
                worker = self._replace(worker, "timed out")
                raise DecodeTimeoutError(
                    f"decoding took longer than {self.timeout_s:g} s; the image is too expensive to decode"
                )
            answer = worker.connection.recv()
            if answer[0] == "error":
                raise answer[1]
            return DecodedCrops(worker.crops(answer), answer[2])
        except (EOFError, OSError) as exc:
            worker = self._replace(worker, "crashed")
            raise DecodeCrashedError(f"the decoder crashed on this image ({type(exc).__name__})") from exc
        finally:
            self._idle.put(worker)

    async def decode_async(self, data: bytes, plan: CropPlan, max_pixels: int) -> DecodedCrops:
        """``decode`` on the pool's own threads, awaited from the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.decode, data, plan, max_pixels)

    def _replace(self, worker: _Worker, reason: str) -> _Worker:
        log.warning("decode worker pid %s %s; replacing it", worker.process.pid, reason)
        worker.stop(kill=True)
        replacement = _Worker()  # becomes ready in the background; its next job waits for that
        self._workers[self._workers.index(worker)] = replacement
        if self._on_restart:
            self._on_restart()
        return replacement

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.stop()

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
