"""The CPU time a decode worker has spent on its current job: image budgets count work, not waiting.

On a machine with more runnable processes than cores (Ray starting beside ``productrec score``, a
burst of uploads) a worker can wait for a core longer than a small image's whole budget; killing
it then would refuse a good image. So a budget is charged in the worker's CPU seconds (utime +
stime of ``/proc/PID/stat``), and the pool's wall-clock cap still bounds every job, so a worker
that hangs without using CPU is killed too. Where ``/proc`` is missing, wall-clock time is charged.
"""

from __future__ import annotations

import os
import time

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
MIN_WAIT_S = 0.02  # the shortest further wait: /proc counts in ticks (10 ms)


class CpuClock:
    """User + system CPU seconds of one process, read from an open ``/proc/PID/stat`` (one ``pread``)."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def seconds(self) -> float | None:
        """CPU seconds used so far, None where they cannot be read."""
        if self._fd is None:
            return None
        try:
            stat = os.pread(self._fd, 1024, 0)
        except OSError:
            return None
        fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and brackets
        return (int(fields[11]) + int(fields[12])) * _TICK_S  # fields 14 and 15: utime, stime

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JobClock:
    """One job's start in wall and CPU time, its CPU budget and the wall-clock cap."""

    def __init__(self, cpu: CpuClock, budget_s: float, cap_s: float) -> None:
        self._cpu, self.budget_s, self._cap_s = cpu, budget_s, cap_s
        self._started_wall = time.monotonic()
        self._started_cpu = cpu.seconds()

    def more_s(self) -> float:
        """Seconds more to wait for a job whose budget has passed in wall time; 0 when it is spent.

        That is the CPU time the job has not used yet, within the cap.
        """
        now = self._cpu.seconds()
        if now is None or self._started_cpu is None:
            return 0.0
        cpu_left = self.budget_s - (now - self._started_cpu)
        wall_left = self._cap_s - (time.monotonic() - self._started_wall)
        if cpu_left <= 0 or wall_left <= 0:
            return 0.0
        return min(max(cpu_left, MIN_WAIT_S), wall_left)
