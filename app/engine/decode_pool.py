"""Decoding and cropping in worker processes that are killed and replaced when they take too long.

A few hundred KB of crafted image can cost seconds to minutes of CPU inside a
decoder, and a thread stuck in C code cannot be interrupted. Each job runs in
a worker process (``app.engine.decode_worker``, Pillow, simplejpeg and NumPy only); when
it has used up the image's budget (CPU seconds, ``app.engine.worker_clock``) or the
wall-clock cap ``timeout_s``, the process is killed, a fresh one takes its place and
the caller gets ``DecodeTimeoutError``.

Workers are plain subprocesses talking over a socket pair, not
``multiprocessing`` children: no fork of the threaded service process, and no
re-import of the caller's ``__main__``.

Before a worker is taken, ``app.contract.image_cost`` reads the file's headers:
a file whose structure would cost too much (a JPEG with 20,000 scans) is refused
at once and never occupies a worker. The headers' width x height also set the
image's time budget (``DecodePolicy``), and send large or irregular files to a
bounded lane: they may hold at most ``large_workers`` workers at once, so small
images always find one free (a pool that grows instead would make them wait the
0.12-0.29 s a new worker needs to start; see docs/deployment.md).

``decode`` blocks and is thread-safe (``productrec score`` calls it from threads);
``decode_async`` does the same job on the event loop without a thread hop: it
writes the job to the worker's socket and lets the loop watch that socket for
the answer (the service's path); a worker a job gives back goes straight to the
coroutine waiting longest. A thread is used only to send uploads too large to
write at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import AsyncIterator, Callable, Generic, Iterator, TypeVar

import numpy as np

from app.contract.errors import DomainError
from app.contract.image_cost import CostLimits, inspect_image
from app.contract.preprocess import CropPlan, check_pixels
from app.core.config import Settings
from app.engine.decode_worker import READY, CropBuffer
from app.engine.worker_clock import CpuClock, JobClock

log = logging.getLogger("productrec.decode")

WORKER_START_TIMEOUT_S = 60.0
# Jobs up to this size are written to the worker's socket from the event loop (they fit in its
# buffer, so the write does not wait for the worker); larger ones are written from a thread.
INLINE_SEND_BYTES = 128 * 1024
# Crops of one image up to this size come back through shared memory, larger ones pickled
# (virtual size: only the pages written are allocated; 5 RGB 224x224 crops are 3 MiB).
SHARED_BUFFER_BYTES = 64 * 1024 * 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
T = TypeVar("T")


class DecodeTimeoutError(DomainError):
    """Decoding one image took longer than the decode timeout (the file is refused)."""

    status, code = 422, "decode_timeout"


class DecodeCrashedError(DomainError):
    """The worker died while decoding (the file is refused; the worker is replaced)."""

    status, code = 422, "decode_failed"


class DecodePoolClosedError(DomainError, RuntimeError):
    """The pool is shut down."""

    status, code, retry = 503, "shutting_down", True


@dataclass(frozen=True)
class DecodePolicy:
    """Per-image rules: header limits, the time budget for its size, and which images take the large lane."""

    cost_limits: CostLimits
    timeout_base_s: float
    timeout_per_mpixel_s: float
    large_image_pixels: int
    large_workers: int  # 0: half the workers, at least one

    @classmethod
    def from_settings(cls, settings: Settings) -> "DecodePolicy":
        return cls(
            CostLimits(
                settings.max_jpeg_scans,
                settings.max_image_frames,
                settings.max_image_chunks,
                settings.max_tiff_strips,
            ),
            settings.decode_timeout_base_s,
            settings.decode_timeout_per_mpixel_s,
            settings.decode_large_image_pixels,
            settings.decode_large_workers,
        )

    @classmethod
    def default(cls) -> "DecodePolicy":
        """The policy of the default settings (the environment is not read)."""
        return cls.from_settings(Settings.model_construct())

    def budget_s(self, pixels: int, cap_s: float) -> float:
        """Seconds an image of ``pixels`` may take to decode and crop."""
        return min(cap_s, self.timeout_base_s + self.timeout_per_mpixel_s * pixels / 1e6)

    def lane_workers(self, workers: int) -> int:
        """Workers the large lane may hold at once."""
        return min(workers, self.large_workers or max(1, workers // 2))


@dataclass(frozen=True)
class Admission:
    """An image whose headers passed: its time budget and lane."""

    budget_s: float
    large: bool
    size: str  # "WxH" or "unknown size", for messages


@dataclass
class _Checkout:
    """The worker a job holds; replaced in place when the worker is killed, so the job returns the new one."""

    worker: "_Worker"


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
                [sys.executable, "-m", "app.engine.decode_worker", *arguments],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self.connection = Connection(ours.detach())
        self.cpu = CpuClock(self.process.pid)
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
        self.cpu.close()
        if self.buffer is not None:
            self.buffer.close()


class _Handout(Generic[T]):
    """Idle items (workers, or the large lane's slots) for threads (``take``) and coroutines (``take_async``) alike.

    An item put back goes to the coroutine that has waited longest (on the caller's event loop,
    directly when that is the loop putting it back), else to a waiting thread, else to the list.
    """

    def __init__(self, items: list[T] | None = None) -> None:
        self._condition = threading.Condition()
        self._idle: deque[T] = deque(items or [])
        self._coroutines: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._closed = False

    def put(self, item: T) -> None:
        with self._condition:
            while self._coroutines:
                loop, waiter = self._coroutines.popleft()
                if waiter.done():  # its coroutine was cancelled
                    continue
                if _running_loop() is loop:
                    waiter.set_result(item)
                    return
                try:
                    loop.call_soon_threadsafe(self._hand_over, waiter, item)
                    return
                except RuntimeError:  # that loop is closed: its waiter will never run
                    continue
            self._idle.append(item)
            self._condition.notify()

    def _hand_over(self, waiter: asyncio.Future, item: T) -> None:
        if waiter.done():  # cancelled on its way
            self.put(item)
        else:
            waiter.set_result(item)

    def take(self) -> T:
        """An idle item, waiting for one as long as it takes."""
        with self._condition:
            while not self._idle and not self._closed:
                self._condition.wait()
            if self._closed:
                raise DecodePoolClosedError("the decode pool is shut down")
            return self._idle.popleft()

    async def take_async(self) -> T:
        """``take`` for a coroutine: the event loop stays free while it waits."""
        with self._condition:
            if self._closed:
                raise DecodePoolClosedError("the decode pool is shut down")
            if self._idle:
                return self._idle.popleft()
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._coroutines.append((loop, waiter))
        return await waiter

    def close(self) -> None:
        """Every waiter, now and later, gets ``DecodePoolClosedError``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            waiting, self._coroutines = self._coroutines, deque()
        for loop, waiter in waiting:
            try:
                loop.call_soon_threadsafe(_fail_closed, waiter)
            except RuntimeError:  # that loop is closed: its waiter will never run
                pass


class DecodePool:
    """``workers`` decode processes, each image checked from its headers first and decoded within its budget."""

    def __init__(
        self,
        workers: int,
        timeout_s: float,
        on_restart: Callable[[], None] | None = None,
        policy: DecodePolicy | None = None,
    ) -> None:
        self.timeout_s = timeout_s  # the cap on every image's budget
        self.policy = policy or DecodePolicy.default()
        self._on_restart = on_restart
        self._idle: _Handout[_Worker] = _Handout()
        self._large_slots = _Handout(list(range(self.policy.lane_workers(workers))))
        self._workers = [_Worker() for _ in range(workers)]
        for worker in self._workers:
            worker.wait_ready()
            self._idle.put(worker)
        self._closed = False

    @classmethod
    def for_settings(cls, settings: Settings, on_restart: Callable[[], None] | None = None) -> "DecodePool":
        """The pool the settings describe: workers, cap, header limits, budgets and lane."""
        return cls(settings.decode_workers, settings.decode_timeout_s, on_restart, DecodePolicy.from_settings(settings))

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def admit(self, data: bytes, max_pixels: int) -> Admission:
        """Check the headers (``ImageTooComplexError``, ``ImageTooLargeError``); the image's budget and lane."""
        cost = inspect_image(data, self.policy.cost_limits)
        width, height = cost.width, cost.height
        if width is None or height is None:  # the worker checks the size Pillow reads; budget the largest
            return Admission(self.policy.budget_s(max_pixels, self.timeout_s), True, "unknown size")
        check_pixels(width, height, max_pixels)
        large = cost.irregular or width * height > self.policy.large_image_pixels
        return Admission(self.policy.budget_s(width * height, self.timeout_s), large, f"{width}x{height}")

    def decode(self, data: bytes, plan: CropPlan, max_pixels: int) -> DecodedCrops:
        """Decode and crop one image in a worker; blocks until a worker is free and has answered.

        Raises ``ImageTooComplexError`` (from the headers, before any worker is taken),
        ``ImageDecodeError``/``ImageTooLargeError`` for bad images, ``DecodeTimeoutError``
        when the worker took longer than the image's budget (it is then replaced).
        """
        self._check_open()
        admitted = self.admit(data, max_pixels)
        with self._lane(admitted):
            checkout = _Checkout(self._idle.take())
            try:
                self._revive(checkout)
                worker = checkout.worker
                worker.wait_ready()
                clock = self._clock(worker, admitted)
                worker.connection.send(_job(data, plan, max_pixels))
                answered = worker.connection.poll(admitted.budget_s)
                while not answered and (more_s := clock.more_s()) > 0:
                    answered = worker.connection.poll(more_s)
                return self._result(checkout, answered, admitted)
            except (EOFError, OSError) as exc:
                raise self._crashed(checkout, exc) from exc
            finally:
                self._idle.put(checkout.worker)

    async def decode_async(self, data: bytes, plan: CropPlan, max_pixels: int) -> DecodedCrops:
        """``decode`` for the event loop, which watches the worker's socket instead of a thread blocking on it.

        If the caller is cancelled (the client went away), the job still runs to its end, so the
        worker's answer is never left for the next job to read.
        """
        self._check_open()
        admitted = self.admit(data, max_pixels)
        job = asyncio.ensure_future(self._decode_on_loop(data, plan, max_pixels, admitted))
        job.add_done_callback(_retrieve)
        return await asyncio.shield(job)

    async def _decode_on_loop(self, data: bytes, plan: CropPlan, max_pixels: int, admitted: Admission) -> DecodedCrops:
        async with self._lane_async(admitted):
            checkout = _Checkout(await self._idle.take_async())
            try:
                self._revive(checkout)
                worker = checkout.worker
                if not worker.ready:
                    await asyncio.to_thread(worker.wait_ready)
                job, clock = _job(data, plan, max_pixels), self._clock(worker, admitted)
                if len(data) > INLINE_SEND_BYTES:
                    await asyncio.to_thread(worker.connection.send, job)
                else:
                    worker.connection.send(job)
                answered = await _readable(worker.connection, admitted.budget_s)
                while not answered and (more_s := clock.more_s()) > 0:
                    answered = await _readable(worker.connection, more_s)
                return self._result(checkout, answered, admitted)
            except (EOFError, OSError) as exc:
                raise self._crashed(checkout, exc) from exc
            finally:
                self._idle.put(checkout.worker)

    @contextmanager
    def _lane(self, admitted: Admission) -> Iterator[None]:
        """Hold a slot of the large lane for a large image (waiting for one); nothing for a small one."""
        if not admitted.large:
            yield
            return
        slot = self._large_slots.take()
        try:
            yield
        finally:
            self._large_slots.put(slot)

    @asynccontextmanager
    async def _lane_async(self, admitted: Admission) -> AsyncIterator[None]:
        """``_lane`` for a coroutine."""
        if not admitted.large:
            yield
            return
        slot = await self._large_slots.take_async()
        try:
            yield
        finally:
            self._large_slots.put(slot)

    def _check_open(self) -> None:
        if self._closed:
            raise DecodePoolClosedError("the decode pool is shut down")

    def _revive(self, checkout: _Checkout) -> None:
        """Replace a worker that died while idle (e.g. the OOM killer): not this image's fault."""
        if checkout.worker.process.poll() is not None:
            checkout.worker = self._replace(checkout.worker, f"exited with status {checkout.worker.process.returncode}")

    def _clock(self, worker: _Worker, admitted: Admission) -> JobClock:
        """The clock of a job about to be sent: its budget in the worker's CPU seconds, the cap in wall seconds."""
        return JobClock(worker.cpu, admitted.budget_s, self.timeout_s)

    def _result(self, checkout: _Checkout, answered: bool, admitted: Admission) -> DecodedCrops:
        """The crops of the worker's answer; a worker that did not answer in time is replaced."""
        if not answered:
            checkout.worker = self._replace(checkout.worker, "timed out")
            raise DecodeTimeoutError(
                f"decoding took longer than {admitted.budget_s:g} s, the budget for an image of {admitted.size}; "
                "the image is too expensive to decode"
            )
        answer = checkout.worker.connection.recv()
        if answer[0] == "error":
            raise answer[1]
        return DecodedCrops(checkout.worker.crops(answer), answer[2])

    def _crashed(self, checkout: _Checkout, exc: BaseException) -> Exception:
        if self._closed:
            return DecodePoolClosedError("the decode pool is shut down")
        checkout.worker = self._replace(checkout.worker, "crashed")
        return DecodeCrashedError(f"the decoder crashed on this image ({type(exc).__name__})")

    def _replace(self, worker: _Worker, reason: str) -> _Worker:
        log.warning("decode worker pid %s %s; replacing it", worker.process.pid, reason)
        worker.stop(kill=True)
        replacement = _Worker()  # becomes ready in the background; its next job waits for that
        self._workers[self._workers.index(worker)] = replacement
        if self._on_restart:
            self._on_restart()
        return replacement

    def close(self) -> None:
        """Stop every worker (idempotent); callers still waiting for a worker get ``DecodePoolClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._idle.close()
        self._large_slots.close()
        for worker in self._workers:
            worker.stop()

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _job(data: bytes, plan: CropPlan, max_pixels: int) -> tuple:
    return (data, list(plan), max_pixels)


async def _readable(connection: Connection, timeout_s: float) -> bool:
    """Whether ``connection`` has something to read within ``timeout_s``, awaited on the running loop."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = connection.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(True))
    try:
        async with asyncio.timeout(timeout_s):
            return await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        # uvloop (libuv's uv_poll_init) leaves a watched fd non-blocking; the pool's sends and receives
        # block, and a job or an answer larger than the socket buffer would fail half-written otherwise.
        os.set_blocking(fd, True)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _fail_closed(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(DecodePoolClosedError("the decode pool is shut down"))


def _retrieve(job: asyncio.Future) -> None:
    """Mark an abandoned job's exception as seen (its caller was cancelled; the error was for it alone)."""
    if not job.cancelled():
        job.exception()
