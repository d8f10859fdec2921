"""The CPU clock of decode workers (app.engine.worker_clock): what it reads and how long a job may still wait."""

from __future__ import annotations

import os
import time

import pytest

from app.engine.worker_clock import CpuClock, JobClock

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_it_reads_the_cpu_time_of_the_process() -> None:
    clock = CpuClock(os.getpid())
    try:
        before, process_before = clock.seconds(), time.process_time()
        spin(0.3)
        used, process_used = clock.seconds() - before, time.process_time() - process_before
        assert used == pytest.approx(process_used, abs=0.03)
    finally:
        clock.close()


def test_a_process_that_is_gone_reads_none() -> None:
    assert CpuClock(2**22 + 12345).seconds() is None


def test_a_job_waits_for_the_cpu_it_has_not_used_within_the_cap() -> None:
    clock = CpuClock(os.getpid())
    try:
        idle = JobClock(clock, budget_s=0.5, cap_s=10)
        time.sleep(0.2)  # waiting uses no CPU: nearly the whole budget is left
        assert 0.45 < idle.more_s() <= 0.5
        capped = JobClock(clock, budget_s=0.5, cap_s=0.25)
        time.sleep(0.1)
        assert capped.more_s() <= 0.15  # never past the cap
        busy = JobClock(clock, budget_s=0.2, cap_s=10)
        spin(0.25)
        assert busy.more_s() == 0.0  # the budget is spent
        half = JobClock(clock, budget_s=0.2, cap_s=10)
        spin(0.1)
        assert 0.06 < half.more_s() < 0.13  # what is left of the CPU budget (/proc counts in 10 ms ticks)
    finally:
        clock.close()
