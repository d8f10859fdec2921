"""The decode worker pool: same crops as in-process, errors carried over, slow or crashed workers replaced."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import encode, noise_image, png_claiming_size, slow_png

from app.preprocess import ImageDecodeError, ImageTooLargeError, PreprocessConfig, decode_crops
from app.serving.decode_pool import DecodeCrashedError, DecodePool, DecodePoolClosedError, DecodeTimeoutError

PLAN = [
    (PreprocessConfig(16, 1, (0.5,), (0.25,), "bilinear", (16, 20)), (16, 20)),
    (PreprocessConfig(12, 3, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2), "bicubic", (12,)), (12,)),
]
MAX_PIXELS = 60_000_000


@pytest.fixture(scope="module")
def restarts() -> list[int]:
    return []


@pytest.fixture(scope="module")
def pool(restarts):
    with DecodePool(workers=2, timeout_s=0.4, on_restart=lambda: restarts.append(1)) as pool:
        yield pool


def test_crops_equal_in_process_preprocessing(pool) -> None:
    data = encode(noise_image(1, (30, 22), "RGB"), "JPEG")
    decoded = pool.decode(data, PLAN, MAX_PIXELS)
    expected = decode_crops(data, PLAN, MAX_PIXELS)
    assert [crops.shape for crops in decoded.crops] == [(2, 1, 16, 16), (1, 3, 12, 12)]
    for got, want in zip(decoded.crops, expected):
        np.testing.assert_array_equal(got, want)
    assert decoded.seconds > 0


def test_bad_images_raise_the_preprocessing_errors(pool) -> None:
    with pytest.raises(ImageDecodeError):
        pool.decode(b"not an image", PLAN, MAX_PIXELS)
    with pytest.raises(ImageTooLargeError):
        pool.decode(png_claiming_size(100_000, 100_000), PLAN, MAX_PIXELS)


def test_slow_image_times_out_and_its_worker_is_replaced(pool, restarts) -> None:
    pids = set(pool.pids)
    started = time.perf_counter()
    with pytest.raises(DecodeTimeoutError):
        pool.decode(slow_png(), PLAN, MAX_PIXELS)
    assert time.perf_counter() - started < 0.4 + 2.0
    assert len(restarts) == 1
    assert len(set(pool.pids) - pids) == 1 and pool.size == 2
    for seed in range(4):  # both workers, the new one included, still decode
        assert pool.decode(encode(noise_image(seed)), PLAN, MAX_PIXELS).crops[0].shape == (2, 1, 16, 16)


def test_worker_dying_mid_decode_fails_that_image_only() -> None:
    restarts: list[int] = []
    with DecodePool(workers=2, timeout_s=10, on_restart=lambda: restarts.append(1)) as pool:
        with ThreadPoolExecutor(1) as thread:
            pending = thread.submit(pool.decode, slow_png(), PLAN, MAX_PIXELS)
            time.sleep(0.3)
            for pid in pool.pids:  # the busy worker and the idle one
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(DecodeCrashedError):
                pending.result(timeout=10)
        data = encode(noise_image(5))
        # the idle worker that died is replaced before it is given a job: no error for that image
        assert [pool.decode(data, PLAN, MAX_PIXELS).crops[0].shape for _ in range(3)] == [(2, 1, 16, 16)] * 3
    assert len(restarts) == 2


def test_closed_pool_refuses_work_and_stops_its_workers() -> None:
    pool = DecodePool(workers=1, timeout_s=5)
    (pid,) = pool.pids
    pool.close()
    pool.close()
    with pytest.raises(DecodePoolClosedError):
        pool.decode(b"", PLAN, MAX_PIXELS)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
