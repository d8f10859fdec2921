"""A small Prometheus registry written out in the text exposition format (version 0.0.4).

The serving image installs no prometheus_client; counters, gauges and
histograms with labels are all the service needs. Thread-safe: the inference
thread and decode threads record into it as well as the event loop.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(label) for label in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class _Value(_Metric):
    """A number per label set: the common part of counters and gauges."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def _add(self, amount: float, labels: Sequence[str]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, key)} {_number(value)}" for key, value in items]


class Counter(_Value):
    kind = "counter"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(amount, labels)


class Gauge(_Value):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        # per label set: [count per bucket (non-cumulative, last one is +Inf)], sum
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[slot] += 1
            total[0] += value

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((key, (list(counts), total[0])) for key, (counts, total) in self._series.items())
        for key, (counts, total) in items:
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {cumulative}")
        return lines


class Registry:
    """Metrics in registration order, exposed together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def _register(self, metric):
        if any(existing.name == metric.name for existing in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return self._register(Histogram(name, help, labelnames, buckets))

    def exposition(self) -> str:
        """The Prometheus text format of every metric."""
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


class ServingMetrics:
    """The service's metrics, one registry per app instance."""

    def __init__(self) -> None:
        self.registry = registry = Registry()
        self.requests = registry.counter(
            "productrec_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
        )
        self.errors = registry.counter(
            "productrec_http_errors_total",
            "Error answers by endpoint, status and error code (batch items included).",
            ("endpoint", "status", "error"),
        )
        self.latency = registry.histogram(
            "productrec_http_request_duration_seconds", "Request latency by endpoint.", ("endpoint",)
        )
        self.images = registry.counter("productrec_images_total", "Images predicted, by TTA on/off.", ("tta",))
        self.batch_size = registry.histogram(
            "productrec_batch_size", "Images per batch formed by the dynamic batcher.", buckets=BATCH_BUCKETS
        )
        self.queue_depth = registry.gauge("productrec_queue_depth", "Images waiting in the dynamic batcher's queue.")
        self.in_flight = registry.gauge("productrec_images_in_flight", "Images admitted and not yet answered.")
        self.queue_wait = registry.histogram(
            "productrec_queue_wait_seconds", "Time an image waits in the batcher queue before its batch runs."
        )
        self.member_inference = registry.histogram(
            "productrec_member_inference_seconds", "onnxruntime run time of one batch, per member.", ("member",)
        )
        self.decode = registry.histogram("productrec_decode_seconds", "Decode and crop time per image, in the worker.")
        self.decode_timeouts = registry.counter(
            "productrec_decode_timeouts_total", "Images refused because decoding exceeded decode_timeout_s."
        )
        self.decode_worker_restarts = registry.counter(
            "productrec_decode_worker_restarts_total", "Decode workers killed (timeout) or lost (crash) and replaced."
        )
        self.ready = registry.gauge("productrec_ready", "1 when every ensemble member is loaded, else 0.")
