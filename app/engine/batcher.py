"""Dynamic batching: requests arriving together run as one batch (as Triton's dynamic batcher).

One background task takes the first queued request, waits at most
``max_queue_delay_s`` for more (up to ``max_batch_size``; not at all when the
caller's ``arriving`` says no request is on its way), and hands the batch
to ``process`` on an inference thread, so the event loop stays free; with one
thread (the default) batches run one after another, with ``threads`` > 1 up to
that many at once (onnxruntime sessions may run concurrently: on a few cores,
two single-threaded runs use them better than one two-threaded run, which
waits for its slower thread at every operator). Requests queue up meanwhile
and form the next, larger batch; batches are formed in arrival order. The queue is bounded: ``submit`` raises ``QueueFullError``
instead of letting it grow without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from app.contract.errors import DomainError

log = logging.getLogger("productrec.batcher")

Request = TypeVar("Request")
Result = TypeVar("Result")
T = TypeVar("T")


class QueueFullError(DomainError):
    """The batcher's queue is at its limit; the caller should retry later."""

    status, code, retry = 503, "overloaded", True


class BatcherClosedError(DomainError, RuntimeError):
    """The batcher was shut down before the request ran."""

    status, code, retry = 503, "shutting_down", True


@dataclass(frozen=True)
class Batched(Generic[Result]):
    """One request's result and how it was batched."""

    result: Result
    batch_size: int
    queue_wait_s: float  # from submit to the start of its batch
    run_s: float  # the batch's processing time


@dataclass
class _Pending(Generic[Request]):
    request: Request
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[Request, Result]):
    """Coalesce concurrent ``submit`` calls into calls of ``process(requests) -> results``."""

    def __init__(
        self,
        process: Callable[[list[Request]], Sequence[Result]],
        max_batch_size: int,
        max_queue_delay_s: float,
        queue_limit: int,
        on_batch: Callable[[int], None] | None = None,
        arriving: Callable[[], int] | None = None,
        threads: int = 1,
    ) -> None:
        """``arriving``: how many requests are on their way to ``submit`` (e.g. being decoded); when it
        is 0 and the queue is empty the batch runs at once, since waiting could not grow it."""
        if max_batch_size < 1 or queue_limit < 1 or max_queue_delay_s < 0 or threads < 1:
            raise ValueError("max_batch_size, queue_limit and threads must be >= 1 and max_queue_delay_s >= 0")
        self._process = process
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_limit)
        self._on_batch = on_batch
        self._arriving = arriving
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="productrec-infer")
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch running now)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="productrec-batcher")

    async def submit(self, request: Request) -> Batched[Result]:
        """Queue ``request`` and wait for its result (raises what ``process`` raised)."""
        if self._task is None or self._task.done():
            raise BatcherClosedError("the batcher is not running")
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFullError(f"the queue holds its limit of {self._queue.maxsize} requests") from None
        return await pending.future

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the inference thread, between batches, so it never competes with one."""
        if self._task is None or self._task.done():
            raise BatcherClosedError("the batcher is not running")
        try:
            running = asyncio.get_running_loop().run_in_executor(self._executor, function)
        except RuntimeError as exc:  # submitting to an executor that close() shut down
            raise BatcherClosedError("the service is shutting down") from exc
        return await running

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.threads)
        while True:
            await slots.acquire()  # a thread is free before the batch forms, so it grows while all are busy
            batch = await self._collect()
            if not batch:
                slots.release()
                continue
            running = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(running)
            running.add_done_callback(lambda task: (self._running.discard(task), slots.release()))

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_queue_delay_s
        try:
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or (self._arriving is not None and self._arriving() == 0):
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
        except asyncio.CancelledError:
            _fail(batch, BatcherClosedError("the service is shutting down"))
            raise
        return [pending for pending in batch if not pending.future.done()]  # callers that gave up

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._process, [pending.request for pending in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"process returned {len(results)} results for {len(batch)} requests")
        except asyncio.CancelledError:
            _fail(batch, BatcherClosedError("the service is shutting down"))
            raise
        except Exception as exc:
            log.exception("batch of %d failed", len(batch))
            _fail(batch, exc)
            return
        run_s = time.perf_counter() - started
        if self._on_batch:
            self._on_batch(len(batch))
        for pending, result in zip(batch, results):
            if not pending.future.done():
                pending.future.set_result(Batched(result, len(batch), started - pending.enqueued, run_s))

    async def close(self) -> None:
        """Stop the task; requests still queued or running fail with ``BatcherClosedError``."""
        for task in [self._task, *self._running]:
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        waiting = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _fail(waiting, BatcherClosedError("the service is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)  # lets a running batch finish, off the loop


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
