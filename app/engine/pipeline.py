"""The one prediction pipeline, LitServe-style: decode -> batch -> predict -> rank -> result.

decode: bytes -> TTA crops in a decode worker process (time-limited);
batch: the crops of concurrent images are queued in the dynamic batcher;
predict: one ``Ensemble.member_probabilities`` call per batch on the inference
thread, then ``app.contract.ranking.rank``; unbatch: each image gets its own rows;
result: an ``ImageResult`` in domain terms (no HTTP schema).

Every front end is a thin layer over ``Pipeline.predict``: the HTTP service
(``app.api``) encodes results as JSON, ``productrec score`` writes them to CSV or
JSONL. Failures are ``DomainError``s that carry their own status and code.
Admission is bounded by ``queue_limit`` images.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from app.contract.calibration import label_set_sizes
from app.contract.errors import DomainError
from app.contract.ranking import Ranking, Strategy, rank
from app.core.config import Settings
from app.engine.batcher import DynamicBatcher
from app.engine.decode_pool import DecodePool, DecodeTimeoutError
from app.engine.ensemble import Ensemble
from app.engine.metrics import ServingMetrics

log = logging.getLogger("productrec.pipeline")


class ServiceOverloadedError(DomainError):
    """More images in flight than ``queue_limit`` allows (retry later)."""

    status, code, retry = 503, "overloaded", True


@dataclass(frozen=True)
class LabelScore:
    """One ranked label: mean member probability and member top-1 votes."""

    index: int
    label: str
    score: float
    votes: int


@dataclass(frozen=True)
class MemberTop1:
    """One member's own top-1."""

    name: str
    version: str
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Timings:
    """Where the time of one image went, in milliseconds."""

    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


TOP_K, AVERAGE_K = "top_k", "average_k"
"""The label-set modes: the k best labels, or the labels above the threshold fitted for average size k."""


@dataclass(frozen=True)
class ImageResult:
    """The ensemble's answer for one image."""

    labels: list[LabelScore]
    members: list[MemberTop1]
    ensemble: str
    strategy: str
    tta: bool
    batch_size: int
    timings: Timings
    probabilities: np.ndarray = field(repr=False, compare=False)  # [K] float32: the members' mean
    mode: str = TOP_K


@dataclass(frozen=True)
class MemberLogits:
    """One member's run on already-preprocessed inputs."""

    logits: np.ndarray  # [N, K]
    queue_s: float  # waiting for the inference thread
    run_s: float


@dataclass(frozen=True)
class InferenceRequest:
    """One image's crops (one array per crop group) and how to rank it."""

    crops: list[np.ndarray]
    tta: bool
    top_k: int
    average_k: int | None = None  # set: the average-k label set instead of the top_k labels


@dataclass(frozen=True)
class InferenceResult:
    member_probs: np.ndarray  # [M, K]
    ranking: Ranking


class Pipeline:
    """A loaded ensemble behind a decode pool and a dynamic batcher."""

    def __init__(
        self, ensemble: Ensemble, settings: Settings, metrics: ServingMetrics, pool: DecodePool | None = None
    ) -> None:
        """``pool``: decode workers shared with other pipelines (the caller closes it); else the pipeline starts its own."""
        self.ensemble = ensemble
        self.settings = settings
        self.metrics = metrics
        self.strategy: Strategy = settings.strategy or ensemble.strategy
        self.in_flight = 0
        self.decoding = 0  # images in (or waiting for) a decode worker: the ones a forming batch may wait for
        self.pool = pool
        self._owns_pool = pool is None
        self.batcher: DynamicBatcher[InferenceRequest, InferenceResult] | None = None

    async def start(self) -> None:
        """Start the decode workers and the batching task."""
        settings = self.settings
        if self.pool is None:
            self.pool = await asyncio.to_thread(
                DecodePool.for_settings, settings, self.metrics.decode_worker_restarts.inc
            )
        self.batcher = DynamicBatcher(
            self.infer,
            settings.max_batch_size,
            settings.max_queue_delay_ms / 1000.0,
            settings.queue_limit,
            on_batch=self.metrics.batch_size.observe,
            arriving=lambda: self.decoding,
        )
        self.batcher.start()
        log.info(
            "serving %s (%d members, strategy %s): %d decode workers, batches of up to %d images within %.1f ms",
            self.ensemble.spec.name,
            len(self.ensemble.members),
            self.strategy,
            settings.decode_workers,
            settings.max_batch_size,
            settings.max_queue_delay_ms,
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.pool is not None and self._owns_pool:
            await asyncio.to_thread(self.pool.close)

    async def __aenter__(self) -> "Pipeline":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth if self.batcher else 0

    @contextmanager
    def _admitted(self, count: int) -> Iterator[None]:
        """Count ``count`` images in flight while the block runs, or refuse them beyond ``queue_limit``."""
        if self.in_flight + count > self.settings.queue_limit:
            raise ServiceOverloadedError(
                f"{self.in_flight} images in flight; {count} more would exceed "
                f"the queue limit of {self.settings.queue_limit}"
            )
        self.in_flight += count
        self.metrics.in_flight.inc(count)
        try:
            yield
        finally:
            self.in_flight -= count
            self.metrics.in_flight.dec(count)

    async def predict(
        self, images: Sequence[bytes], top_k: int, tta: bool, average_k: int | None = None
    ) -> list[ImageResult | BaseException]:
        """One outcome per image, in order: its result, or the exception that refused it.

        With ``average_k`` each image gets its average-k label set (``Ensemble.label_set_threshold``) instead of the top_k labels.
        """
        started = time.perf_counter()
        with self._admitted(len(images)):
            return await asyncio.gather(
                *(self._predict_one(data, top_k, tta, started, average_k) for data in images), return_exceptions=True
            )

    async def member_logits(self, index: int, inputs: np.ndarray) -> MemberLogits:
        """Member ``index``'s logits for preprocessed ``[N, C, H, W]`` inputs, run on the inference thread.

        Each of the N rows counts against ``queue_limit`` like an image; the run waits for the batch
        in progress instead of competing with it for the cores.
        """
        assert self.batcher is not None, "start() the pipeline first"
        member = self.ensemble.members[index]

        def run() -> tuple[np.ndarray, float, float]:
            began = time.perf_counter()
            return member.logits(inputs), began, time.perf_counter() - began

        with self._admitted(len(inputs)):
            submitted = time.perf_counter()
            logits, began, run_s = await self.batcher.call(run)
        self.metrics.member_inference.labels(member=member.manifest.name).observe(run_s)
        return MemberLogits(logits, began - submitted, run_s)

    async def _predict_one(self, data: bytes, top_k: int, tta: bool, started: float, average_k: int | None) -> ImageResult:
        assert self.pool is not None and self.batcher is not None, "start() the pipeline first"
        self.decoding += 1
        try:
            decoded = await self.pool.decode_async(data, self.ensemble.crop_plan(tta), self.settings.max_image_pixels)
        except DecodeTimeoutError:
            self.metrics.decode_timeouts.inc()
            raise
        finally:
            self.decoding -= 1
        self.metrics.decode.observe(decoded.seconds)
        batched = await self.batcher.submit(InferenceRequest(decoded.crops, tta, top_k, average_k))
        self.metrics.queue_wait.observe(batched.queue_wait_s)
        self.metrics.images.labels(tta=str(tta).lower()).inc()
        timings = Timings(
            decode_ms=decoded.seconds * 1000,
            queue_ms=batched.queue_wait_s * 1000,
            inference_ms=batched.run_s * 1000,
            total_ms=(time.perf_counter() - started) * 1000,
        )
        return self.result(batched.result, tta, batched.batch_size, timings, AVERAGE_K if average_k else TOP_K)

    def infer(self, requests: list[InferenceRequest]) -> list[InferenceResult]:
        """predict + rank + unbatch, on the inference thread: one member run per TTA setting in the batch."""
        self.metrics.queue_depth.set(self.queue_depth)
        results: list[InferenceResult | None] = [None] * len(requests)
        by_tta: dict[bool, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_tta[request.tta].append(index)
        for tta, indices in by_tta.items():
            timings: dict[str, float] = {}
            probs = self.ensemble.member_probabilities([requests[i].crops for i in indices], tta, timings)
            for member, seconds in timings.items():
                self.metrics.member_inference.labels(member=member).observe(seconds)
            by_top_k: dict[int, list[int]] = defaultdict(list)
            for position, index in enumerate(indices):
                by_top_k[self._set_size(requests[index], probs[:, position])].append(position)
            for top_k, positions in by_top_k.items():
                for position, ranking in zip(positions, rank(probs[:, positions], top_k, self.strategy)):
                    results[indices[position]] = InferenceResult(probs[:, position], ranking)
        return results  # type: ignore[return-value]

    def _set_size(self, request: InferenceRequest, member_probs: np.ndarray) -> int:
        """How many labels the image gets: top_k, or the size of its average-k set."""
        if request.average_k is None:
            return request.top_k
        threshold = self.ensemble.label_set_threshold(request.average_k)
        return int(label_set_sizes(member_probs.mean(axis=0)[None], threshold)[0])

    def result(self, inference: InferenceResult, tta: bool, batch_size: int, timings: Timings, mode: str = TOP_K) -> ImageResult:
        """Top-k labels with scores and votes, plus each member's top-1."""
        labels = self.ensemble.labels
        ranking = inference.ranking
        members = []
        for member, probs in zip(self.ensemble.members, inference.member_probs):
            top1 = int(probs.argmax())
            manifest = member.manifest
            members.append(MemberTop1(manifest.name, str(manifest.version), top1, labels[top1], float(probs[top1])))
        return ImageResult(
            labels=[
                LabelScore(int(index), labels[int(index)], float(score), int(votes))
                for index, score, votes in zip(ranking.indices, ranking.scores, ranking.votes)
            ],
            members=members,
            ensemble=self.ensemble.spec.name,
            strategy=self.strategy,
            tta=tta,
            batch_size=batch_size,
            timings=timings,
            probabilities=inference.member_probs.mean(axis=0),
            mode=mode,
        )
