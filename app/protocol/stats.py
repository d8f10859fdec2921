"""Per-model inference statistics in the shape of Triton's statistics extension (one process's counts).

Durations are summed in nanoseconds with their counts, as Triton reports them; ``execution_count``
counts inference requests (the dynamic batcher may merge several into one onnxruntime run).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from app.protocol.tensors import InferTimings

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class _ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    durations: dict[str, list[int]] = field(default_factory=lambda: {phase: [0, 0] for phase in _PHASES})

    def add(self, phase: str, seconds: float) -> None:
        counted = self.durations[phase]
        counted[0] += 1
        counted[1] += int(seconds * 1e9)


class Statistics:
    """Counts by (model, version); thread-safe, since the gRPC and HTTP front ends share it."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], _ModelStats] = {}
        self._lock = threading.Lock()

    def _entry(self, name: str, version: str) -> _ModelStats:
        return self._models.setdefault((name, version), _ModelStats())

    def success(self, name: str, version: str, batch_size: int, seconds: float, timings: InferTimings) -> None:
        with self._lock:
            entry = self._entry(name, version)
            entry.last_inference_ms = int(time.time() * 1000)
            entry.inference_count += batch_size
            entry.execution_count += 1
            entry.add("success", seconds)
            entry.add("queue", timings.queue_s)
            entry.add("compute_input", timings.compute_input_s)
            entry.add("compute_infer", timings.compute_infer_s)

    def failure(self, name: str, version: str, seconds: float) -> None:
        with self._lock:
            self._entry(name, version).add("fail", seconds)

    def report(self, models: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for ``models`` (name, version), zeros for those never called."""
        stats = []
        with self._lock:
            for name, version in models:
                entry = self._models.get((name, version), _ModelStats())
                stats.append(
                    {
                        "name": name,
                        "version": version,
                        "last_inference": entry.last_inference_ms,
                        "inference_count": entry.inference_count,
                        "execution_count": entry.execution_count,
                        "inference_stats": {
                            phase: {"count": count, "ns": ns} for phase, (count, ns) in entry.durations.items()
                        },
                        "batch_stats": [],
                    }
                )
        return {"model_stats": stats}
