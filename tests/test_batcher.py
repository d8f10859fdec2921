"""The dynamic batcher on its own: coalescing, limits, errors, shutdown, and the loop staying free."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import pytest

from app.engine.batcher import BatcherClosedError, DynamicBatcher, QueueFullError


class Recorder:
    """A ``process`` function that doubles numbers and remembers the batches it saw."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = gate

    def __call__(self, requests: list[int]) -> list[int]:
        if self.gate is not None:
            assert self.gate.wait(5), "test gate never opened"
        time.sleep(self.delay_s)
        self.batches.append(list(requests))
        return [2 * request for request in requests]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


@asynccontextmanager
async def running(process, max_batch_size: int = 8, max_queue_delay_s: float = 0.0, queue_limit: int = 10, **options):
    """A started batcher, closed on exit."""
    batcher = DynamicBatcher(process, max_batch_size, max_queue_delay_s, queue_limit, **options)
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.close()


async def occupy(batcher: DynamicBatcher, request: int) -> asyncio.Future:
    """Submit ``request`` and give its batch time to start (and block on the recorder's gate)."""
    future = asyncio.ensure_future(batcher.submit(request))
    await asyncio.sleep(0.05)
    return future


def test_concurrent_requests_are_coalesced_up_to_max_batch_size() -> None:
    recorder = Recorder()
    sizes: list[int] = []

    async def scenario():
        async with running(recorder, 4, 0.2, 100, on_batch=sizes.append) as batcher:
            return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    results = run(scenario())
    assert [batched.result for batched in results] == [2 * i for i in range(10)]
    assert [len(batch) for batch in recorder.batches] == [4, 4, 2]
    assert sizes == [4, 4, 2]
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(10))
    assert {batched.batch_size for batched in results[:8]} == {4}


def test_a_lone_request_waits_no_longer_than_the_queue_delay() -> None:
    async def scenario(delay_s: float) -> float:
        async with running(Recorder(), max_queue_delay_s=delay_s) as batcher:
            started = time.perf_counter()
            batched = await batcher.submit(21)
            assert batched.result == 42 and batched.batch_size == 1
            return time.perf_counter() - started

    assert run(scenario(0.0)) < 0.1
    assert 0.14 <= run(scenario(0.15)) < 1.0


def test_a_batch_waits_only_while_requests_are_on_their_way() -> None:
    async def scenario(arriving: int) -> float:
        async with running(Recorder(), max_queue_delay_s=0.15, arriving=lambda: arriving) as batcher:
            started = time.perf_counter()
            assert (await batcher.submit(21)).batch_size == 1
            return time.perf_counter() - started

    assert run(scenario(arriving=0)) < 0.1
    assert 0.14 <= run(scenario(arriving=1)) < 1.0


def test_requests_arriving_during_a_batch_form_the_next_batch() -> None:
    recorder = Recorder(gate=threading.Event())

    async def scenario():
        async with running(recorder, max_batch_size=16) as batcher:
            first = await occupy(batcher, 0)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
            await asyncio.sleep(0.05)
            recorder.gate.set()
            await asyncio.gather(first, *rest)

    run(scenario())
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]


def test_full_queue_refuses_instead_of_growing() -> None:
    recorder = Recorder(gate=threading.Event())

    async def scenario():
        async with running(recorder, max_batch_size=1, queue_limit=2) as batcher:
            first = await occupy(batcher, 1)  # taken off the queue, blocked in process
            queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
            await asyncio.sleep(0)
            assert batcher.queue_depth == 2
            with pytest.raises(QueueFullError):
                await batcher.submit(4)
            recorder.gate.set()
            return [batched.result for batched in await asyncio.gather(first, *queued)]

    assert run(scenario()) == [2, 4, 6]


def test_a_failing_batch_fails_its_requests_only() -> None:
    calls = []

    def process(requests: list[int]) -> list[int]:
        calls.append(list(requests))
        if 13 in requests:
            raise RuntimeError("bad batch")
        return requests

    async def scenario():
        async with running(process, max_batch_size=2, max_queue_delay_s=0.05) as batcher:
            outcomes = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
            return outcomes, await batcher.submit(7)

    outcomes, after = run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert after.result == 7
    assert calls == [[13, 1], [7]]


def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    async def scenario():
        async with running(lambda requests: requests[:-1], max_queue_delay_s=0.05) as batcher:
            return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    assert all(isinstance(outcome, RuntimeError) for outcome in run(scenario()))


def test_callers_that_gave_up_are_not_processed() -> None:
    recorder = Recorder(gate=threading.Event())

    async def scenario():
        async with running(recorder) as batcher:
            first = await occupy(batcher, 0)
            abandoned = asyncio.ensure_future(batcher.submit(1))
            kept = asyncio.ensure_future(batcher.submit(2))
            await asyncio.sleep(0)
            abandoned.cancel()
            recorder.gate.set()
            await asyncio.gather(first, kept)

    run(scenario())
    assert recorder.batches == [[0], [2]]


def test_processing_runs_off_the_event_loop() -> None:
    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with running(Recorder(delay_s=0.3)) as batcher:
            task = asyncio.ensure_future(ticker())
            await batcher.submit(1)
            task.cancel()
        return ticks

    assert run(scenario()) >= 10  # the loop kept ticking during the 0.3 s of processing


def test_close_fails_waiting_requests_and_refuses_new_ones() -> None:
    recorder = Recorder(gate=threading.Event())

    async def scenario():
        async with running(recorder, max_batch_size=1) as batcher:
            first = await occupy(batcher, 1)
            waiting = asyncio.ensure_future(batcher.submit(2))
            await asyncio.sleep(0)
            closing = asyncio.ensure_future(batcher.close())
            await asyncio.sleep(0.05)
            recorder.gate.set()
            await closing
            with pytest.raises(BatcherClosedError):
                await batcher.submit(3)
            return await asyncio.gather(first, waiting, return_exceptions=True)

    assert all(isinstance(outcome, BatcherClosedError) for outcome in run(scenario()))


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"queue_limit": 0}, {"max_queue_delay_s": -1}])
def test_invalid_limits_are_refused(kwargs) -> None:
    settings = {"max_batch_size": 1, "max_queue_delay_s": 0.0, "queue_limit": 1, **kwargs}
    with pytest.raises(ValueError):
        DynamicBatcher(lambda requests: requests, **settings)


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_run_at_once_on_as_many_threads_as_asked(threads) -> None:
    barrier = threading.Barrier(2, timeout=2)  # passes only when two batches run at the same time
    order: list[int] = []

    def process(requests: list[int]) -> list[bool]:
        try:
            barrier.wait()
            met = True
        except threading.BrokenBarrierError:
            met = False
        order.extend(requests)
        return [met] * len(requests)

    async def scenario() -> list[bool]:
        async with running(process, max_batch_size=1, threads=threads) as batcher:
            results = await asyncio.gather(batcher.submit(1), batcher.submit(2))
        return [result.result for result in results]

    met = run(scenario())
    assert met == ([True, True] if threads == 2 else [False, False])
    assert sorted(order) == [1, 2]
