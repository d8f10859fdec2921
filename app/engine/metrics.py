"""The service's Prometheus metrics, with prometheus_client.

With several worker processes (``productrec serve --workers N``) prometheus_client's
multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``, set by ``serve`` before the
workers start): every worker writes its samples to files there and each scrape, whichever
worker answers it, sums them over all workers. Gauges are summed over live workers,
except readiness, which is the minimum (ready only when every worker is).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes for our (legacy-valid) names
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess_mode() -> bool:
    """Whether samples are shared between worker processes through files."""
    return bool(os.environ.get(MULTIPROCESS_DIR_ENV))


class ServingMetrics:
    """The service's metrics, registered in a registry of their own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "productrec_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
            registry=registry,
        )
        self.errors = Counter(
            "productrec_http_errors_total",
            "Error answers by endpoint, status and error code (batch items included).",
            ("endpoint", "status", "error"),
            registry=registry,
        )
        self.latency = Histogram(
            "productrec_http_request_duration_seconds",
            "Request latency by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.images = Counter("productrec_images_total", "Images predicted, by TTA on/off.", ("tta",), registry=registry)
        self.batch_size = Histogram(
            "productrec_batch_size",
            "Images per batch formed by the dynamic batcher.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "productrec_queue_depth",
            "Images waiting in the dynamic batcher's queue (as each batch starts).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "productrec_images_in_flight",
            "Images admitted and not yet answered.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "productrec_queue_wait_seconds",
            "Time an image waits in the batcher queue before its batch runs.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.member_inference = Histogram(
            "productrec_member_inference_seconds",
            "onnxruntime run time of one batch, per member.",
            ("member",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decode = Histogram(
            "productrec_decode_seconds", "Decode and crop time per image, in the worker.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.decode_timeouts = Counter(
            "productrec_decode_timeouts_total",
            "Images refused because decoding exceeded decode_timeout_s.",
            registry=registry,
        )
        self.decode_worker_restarts = Counter(
            "productrec_decode_worker_restarts_total",
            "Decode workers killed (timeout) or lost (crash) and replaced.",
            registry=registry,
        )
        self.model_loads = Counter(
            "productrec_model_loads_total",
            "Ensemble loads by result (loaded, failed); a failed load leaves the previous ensemble serving.",
            ("result",),
            registry=registry,
        )
        self.ready = Gauge(
            "productrec_ready",
            "1 when every ensemble member is loaded (in every worker), else 0.",
            registry=registry,
            multiprocess_mode="livemin",
        )

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or all workers' in multiprocess mode."""
        if not multiprocess_mode():
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return generate_latest(combined)

    @staticmethod
    def process_exited(pid: int | None = None) -> None:
        """Drop a finished worker's live gauges (multiprocess mode; its counters keep counting in the sums)."""
        if multiprocess_mode():
            multiprocess.mark_process_dead(pid or os.getpid())
