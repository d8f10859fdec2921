"""The decode worker pool: same crops as in-process, errors carried over, slow or crashed workers replaced.

Each behaviour is checked through both entry points: ``decode`` from a thread (``productrec score``) and
``decode_async`` on an event loop (the service).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from serving_helpers import encode, noise_image, png_claiming_size, scan_bomb_jpeg, slow_png

from app.contract.image_cost import ImageTooComplexError
from app.contract.preprocess import ImageDecodeError, ImageTooLargeError, PreprocessConfig, decode_crops
from app.engine.decode_pool import (
    DecodeCrashedError,
    DecodePolicy,
    DecodePool,
    DecodePoolClosedError,
    DecodeTimeoutError,
)

PLAN = [
    (PreprocessConfig(16, 1, (0.5,), (0.25,), "bilinear", (16, 20)), (16, 20)),
    (PreprocessConfig(12, 3, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2), "bicubic", (12,)), (12,)),
]
MAX_PIXELS = 60_000_000


@pytest.fixture(params=["thread", "loop"])
def via(request):
    """``decode`` called the way a thread calls it, or awaited on an event loop."""
    if request.param == "thread":
        return lambda pool, *args: pool.decode(*args)
    return lambda pool, *args: asyncio.run(pool.decode_async(*args))


@pytest.fixture(scope="module")
def restarts() -> list[int]:
    return []


@pytest.fixture(scope="module")
def pool(restarts):
    with DecodePool(workers=2, timeout_s=0.4, on_restart=lambda: restarts.append(1)) as pool:
        yield pool


def test_crops_equal_in_process_preprocessing(pool, via) -> None:
    data = encode(noise_image(1, (30, 22), "RGB"), "JPEG")
    decoded = via(pool, data, PLAN, MAX_PIXELS)
    expected = decode_crops(data, PLAN, MAX_PIXELS)
    assert [crops.shape for crops in decoded.crops] == [(2, 1, 16, 16), (1, 3, 12, 12)]
    for got, want in zip(decoded.crops, expected):
        np.testing.assert_array_equal(got, want)
    assert decoded.seconds > 0


def test_bad_images_raise_the_preprocessing_errors(pool, via) -> None:
    with pytest.raises(ImageDecodeError):
        via(pool, b"not an image", PLAN, MAX_PIXELS)
    with pytest.raises(ImageTooLargeError):
        via(pool, png_claiming_size(100_000, 100_000), PLAN, MAX_PIXELS)


def test_slow_image_times_out_and_its_worker_is_replaced(pool, restarts, via) -> None:
    pids, restarted = set(pool.pids), len(restarts)
    started = time.perf_counter()
    with pytest.raises(DecodeTimeoutError):
        via(pool, slow_png(), PLAN, MAX_PIXELS)
    assert time.perf_counter() - started < 0.4 + 5.0  # no hang; the kill itself is checked below (new pid)
    assert len(restarts) == restarted + 1
    assert len(set(pool.pids) - pids) == 1 and pool.size == 2
    for seed in range(4):  # both workers, the new one included, still decode
        assert via(pool, encode(noise_image(seed)), PLAN, MAX_PIXELS).crops[0].shape == (2, 1, 16, 16)


def test_worker_dying_mid_decode_fails_that_image_only(via) -> None:
    restarts: list[int] = []
    with DecodePool(workers=2, timeout_s=10, on_restart=lambda: restarts.append(1)) as pool:
        with ThreadPoolExecutor(1) as thread:
            pending = thread.submit(via, pool, slow_png(), PLAN, MAX_PIXELS)
            time.sleep(0.3)
            for pid in pool.pids:  # the busy worker and the idle one
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(DecodeCrashedError):
                pending.result(timeout=10)
        data = encode(noise_image(5))
        # the idle worker that died is replaced before it is given a job: no error for that image
        assert [via(pool, data, PLAN, MAX_PIXELS).crops[0].shape for _ in range(3)] == [(2, 1, 16, 16)] * 3
    assert len(restarts) == 2


def test_closed_pool_refuses_work_and_stops_its_workers(via) -> None:
    pool = DecodePool(workers=1, timeout_s=5)
    (pid,) = pool.pids
    pool.close()
    pool.close()
    with pytest.raises(DecodePoolClosedError):
        via(pool, b"", PLAN, MAX_PIXELS)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_more_coroutines_than_workers_all_get_their_own_crops() -> None:
    images = [encode(noise_image(seed, (20 + seed, 24))) for seed in range(7)]

    async def decode_all(pool: DecodePool):
        return await asyncio.gather(*(pool.decode_async(data, PLAN, MAX_PIXELS) for data in images))

    with DecodePool(workers=2, timeout_s=10) as pool:
        decoded = asyncio.run(decode_all(pool))
    for data, got in zip(images, decoded):
        np.testing.assert_array_equal(got.crops[0], decode_crops(data, PLAN, MAX_PIXELS)[0])


def test_a_cancelled_caller_leaves_no_answer_behind_for_the_next_job() -> None:
    """The client of a slow image goes away: the job still ends, so the worker's next answer is the next image's."""
    slow, good = slow_png(3000, 2000), encode(noise_image(9))

    async def scenario(pool: DecodePool):
        abandoned = asyncio.ensure_future(pool.decode_async(slow, PLAN, MAX_PIXELS))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        return await pool.decode_async(good, PLAN, MAX_PIXELS)  # the only worker, once the slow job is done

    with DecodePool(workers=1, timeout_s=30) as pool:
        decoded = asyncio.run(scenario(pool))
    np.testing.assert_array_equal(decoded.crops[0], decode_crops(good, PLAN, MAX_PIXELS)[0])


def test_coroutines_waiting_for_a_worker_fail_cleanly_when_the_pool_closes() -> None:
    async def scenario(pool: DecodePool):
        waiting = [asyncio.ensure_future(pool.decode_async(slow_png(), PLAN, MAX_PIXELS)) for _ in range(3)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(pool.close)
        return await asyncio.gather(*waiting, return_exceptions=True)

    pool = DecodePool(workers=1, timeout_s=30)
    in_flight, *waiting = asyncio.run(asyncio.wait_for(scenario(pool), 60))
    assert not isinstance(in_flight, BaseException) or isinstance(in_flight, DecodePoolClosedError)
    assert [type(outcome) for outcome in waiting] == [DecodePoolClosedError] * 2


def policy(**changes) -> DecodePolicy:
    return replace(DecodePolicy.default(), **changes)


def test_costly_headers_are_refused_before_a_worker_is_taken(via) -> None:
    """While the only worker is busy for a second, the 20,000-scan JPEG is refused from its headers at once."""
    with DecodePool(workers=1, timeout_s=30) as pool, ThreadPoolExecutor(1) as thread:
        busy = thread.submit(via, pool, slow_png(), PLAN, MAX_PIXELS)
        time.sleep(0.1)
        started = time.perf_counter()
        with pytest.raises(ImageTooComplexError, match="more than 100 scans"):
            via(pool, scan_bomb_jpeg(), PLAN, MAX_PIXELS)
        with pytest.raises(ImageTooLargeError):
            via(pool, png_claiming_size(100_000, 100_000), PLAN, MAX_PIXELS)
        refused_s = time.perf_counter() - started
        assert not busy.done() and refused_s < 0.1
        busy.result(timeout=30)


def test_the_time_budget_follows_the_pixel_count(via) -> None:
    """slow_png (54 MP, about a second to decode) gets base + per-megapixel seconds, not the 30 s cap."""
    with DecodePool(workers=1, timeout_s=30, policy=policy(timeout_base_s=0.1, timeout_per_mpixel_s=0.002)) as pool:
        assert pool.admit(slow_png(), MAX_PIXELS).budget_s == pytest.approx(0.1 + 0.002 * 54)
        assert pool.admit(encode(noise_image(0)), MAX_PIXELS).budget_s == pytest.approx(0.1 + 0.002 * 28 * 28 / 1e6)
        assert pool.admit(b"not an image", MAX_PIXELS).budget_s == pytest.approx(0.1 + 0.002 * 60)  # unknown size
        started = time.perf_counter()
        with pytest.raises(DecodeTimeoutError, match="0.208 s, the budget for an image of 9000x6000"):
            via(pool, slow_png(), PLAN, MAX_PIXELS)
        assert time.perf_counter() - started < 5.0


def test_large_images_hold_at_most_their_lane_and_small_ones_pass_them(via) -> None:
    """Two workers, a lane of one: while two slow large images are in, small ones are decoded at once."""
    small = encode(noise_image(3))
    with DecodePool(workers=2, timeout_s=30, policy=policy(large_image_pixels=1_000_000, large_workers=1)) as pool:
        assert not pool.admit(small, MAX_PIXELS).large and pool.admit(slow_png(), MAX_PIXELS).large
        with ThreadPoolExecutor(2) as threads:
            started = time.perf_counter()
            large = [threads.submit(via, pool, slow_png(), PLAN, MAX_PIXELS) for _ in range(2)]
            time.sleep(0.1)
            small_seconds = []
            for _ in range(5):
                begun = time.perf_counter()
                via(pool, small, PLAN, MAX_PIXELS)
                small_seconds.append(time.perf_counter() - begun)
            for future in large:
                future.result(timeout=60)
            large_seconds = time.perf_counter() - started
    assert max(small_seconds) < large_seconds / 4, (small_seconds, large_seconds)


def test_large_uploads_decode_one_after_another_under_uvloop() -> None:
    # uvloop leaves a socket it watched non-blocking; a later upload too large to write at once
    # (sent from a thread, which expects a blocking socket) must still reach the worker whole.
    uvloop = pytest.importorskip("uvloop")
    data = encode(noise_image(2, (700, 700), "RGB"), "PNG")  # ~1.4 MB: larger than the socket buffer
    assert len(data) > 1024 * 1024

    async def decode_twice(pool: DecodePool) -> list:
        return [await pool.decode_async(data, PLAN, MAX_PIXELS) for _ in range(3)]

    with DecodePool(workers=1, timeout_s=10) as pool:
        decoded = uvloop.run(decode_twice(pool))
    expected = decode_crops(data, PLAN, MAX_PIXELS)
    for result in decoded:
        for got, want in zip(result.crops, expected):
            np.testing.assert_array_equal(got, want)


def test_a_worker_waiting_for_a_core_is_not_charged_for_it(via) -> None:
    """Stopped (as a starved process is) for 4x the budget, the worker still decodes the image once it runs."""
    restarts: list[int] = []
    budget = policy(timeout_base_s=0.2, timeout_per_mpixel_s=0.0)
    with DecodePool(1, timeout_s=10, on_restart=lambda: restarts.append(1), policy=budget) as pool:
        (pid,) = pool.pids
        data = encode(noise_image(3))
        with ThreadPoolExecutor(1) as thread:
            os.kill(pid, signal.SIGSTOP)
            try:
                pending = thread.submit(via, pool, data, PLAN, MAX_PIXELS)
                time.sleep(0.8)
                assert not pending.done()
            finally:
                os.kill(pid, signal.SIGCONT)
            decoded = pending.result(timeout=10)
        np.testing.assert_array_equal(decoded.crops[0], decode_crops(data, PLAN, MAX_PIXELS)[0])
        assert pool.pids == [pid] and restarts == []


def test_a_worker_hanging_without_using_cpu_is_killed_at_the_cap(via) -> None:
    budget = policy(timeout_base_s=0.2, timeout_per_mpixel_s=0.0)
    with DecodePool(1, timeout_s=1.0, policy=budget) as pool:
        (pid,) = pool.pids
        os.kill(pid, signal.SIGSTOP)
        started = time.perf_counter()
        with pytest.raises(DecodeTimeoutError):
            via(pool, encode(noise_image(4)), PLAN, MAX_PIXELS)
        assert 0.9 < time.perf_counter() - started < 5.0  # the wall-clock cap, not the 0.2 s CPU budget
        assert pool.pids != [pid]
        assert via(pool, encode(noise_image(5)), PLAN, MAX_PIXELS).crops[0].shape == (2, 1, 16, 16)
