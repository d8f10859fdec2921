"""The limit: raw onnxruntime on crops made beforehand, its session options checked, and ranking's cost."""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from app.contract.preprocess import decode_crops
from app.contract.ranking import crop_average_probabilities, rank
from app.core.config import Settings
from app.engine.ensemble import Ensemble

LIMIT_REPLAYS = 2  # the limit of each round is the fastest of this many replays of its batch sizes


class Limit:
    """Raw onnxruntime on pre-computed crops: ``Ensemble.member_probabilities``, nothing else."""

    def __init__(self, ensemble: Ensemble, photos: Sequence[bytes], settings: Settings, parallel: Ensemble | None = None) -> None:
        self.ensemble = ensemble
        self.parallel = parallel  # single-thread sessions for ``run_parallel``
        self.tta = settings.tta
        plan = ensemble.crop_plan(self.tta)
        self._next = 0
        # The crops, made three times so as to time decoding and cropping at their best (in this
        # process: no worker, no IPC), CPU ms per image.
        passes = []
        for _ in range(3):
            started = time.process_time()
            self.crops = [decode_crops(data, plan, settings.max_image_pixels) for data in photos]
            passes.append((time.process_time() - started) / len(photos) * 1000)
        self.preprocess_cpu_ms = statistics.median(passes)

    def images(self, count: int) -> list[list[np.ndarray]]:
        """The crops of the next ``count`` images (cycling)."""
        chosen = [self.crops[(self._next + offset) % len(self.crops)] for offset in range(count)]
        self._next = (self._next + count) % len(self.crops)
        return chosen

    def run(self, schedule: Sequence[int], on_batch: Callable[[int], None] = lambda size: None) -> tuple[float, float]:
        """Wall and CPU seconds of one ``member_probabilities`` call per batch size in ``schedule``."""
        batches = [self.images(size) for size in schedule]
        started, started_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            self.ensemble.member_probabilities(batch, self.tta)
            on_batch(len(batch))
        return time.perf_counter() - started, time.process_time() - started_cpu


    def run_parallel(self, schedule: Sequence[int]) -> float:
        """Wall seconds of the same batches on ``parallel``, one call per core at a time: the limit when
        one session's threads wait for each other (small per-operator work) and independent calls do not.
        The largest batches go first, so that the cores finish about together (longest first)."""
        batches = [self.images(size) for size in sorted(schedule, reverse=True)]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            started = time.perf_counter()
            list(pool.map(lambda batch: self.parallel.member_probabilities(batch, self.tta), batches))
            return time.perf_counter() - started


def session_variants(settings: Settings) -> dict[str, tuple[int, bool]]:
    """Session options worth comparing, name -> (intra-op threads, spinning); the service's among them."""
    cores = os.cpu_count() or 1
    variants = {
        "onnxruntime's defaults: a thread per core (pinned), spinning": (0, True),
        "a thread per core (pinned), no spinning": (0, False),
        **({f"{cores} threads, no spinning": (cores, False)} if cores > 1 else {}),
        "1 thread": (1, False),
    }
    service = (settings.intra_op_threads, settings.intra_op_spinning)
    if service not in variants.values():
        variants[f"{service[0]} threads, spinning {service[1]}"] = service
    return variants


def session_options_check(
    limit: Limit, settings: Settings, batch: int, repeats: int, passes: int, progress: tqdm
) -> dict:
    """Raw onnxruntime images/s at one batch size for a few session options.

    The limit uses the service's session options; this shows how they compare with the others,
    so that a poor choice cannot hide behind a ratio to an equally poor limit. One variant is
    loaded at a time (a spinning one would take the CPU from the others), in alternating order
    over ``passes`` passes.
    """
    variants = session_variants(settings)
    service_options = (settings.intra_op_threads, settings.intra_op_spinning)
    images = limit.images(batch)
    seconds: dict[str, list[float]] = defaultdict(list)
    order = list(variants)
    for _ in range(passes):
        for name in order:
            intra, spinning = variants[name]
            options = {"intra_op_threads": intra, "intra_op_spinning": spinning}
            ensemble = Ensemble.from_settings(settings.model_copy(update=options))
            ensemble.member_probabilities(images, limit.tta)  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                ensemble.member_probabilities(images, limit.tta)
                seconds[name].append(time.perf_counter() - started)
                progress.update(batch)
            del ensemble
        order.reverse()
    return {
        "batch": batch,
        "repeats": repeats * passes,
        "images_per_s": {name: batch / statistics.median(values) for name, values in seconds.items()},
        "service_variant": next(name for name, chosen in variants.items() if chosen == service_options),
    }


def ranking_cost(
    limit: Limit, model_ms_per_image: float, batch_sizes: Sequence[int] = (1, 8), repeats: int = 20
) -> dict:
    """Per image: ``rank`` (top-k + voting) and crop averaging + softmax, against the model time."""
    ensemble = limit.ensemble
    n_crops = len(ensemble.crop_groups(limit.tta)[0].sizes)
    results = {}
    for batch in batch_sizes:
        images = limit.images(batch)
        probs = ensemble.member_probabilities(images, limit.tta)
        logits = np.random.default_rng(0).standard_normal((batch * n_crops, ensemble.num_classes)).astype(np.float32)
        timed: dict[str, list[float]] = defaultdict(list)
        for _ in range(repeats):
            for name, call in (
                ("rank_vote", lambda: rank(probs, 5, "vote")),
                ("rank_mean", lambda: rank(probs, 5, "mean")),
                ("crop_average_softmax", lambda: [crop_average_probabilities(logits, n_crops) for _ in probs]),
            ):
                started = time.perf_counter()
                call()
                timed[name].append((time.perf_counter() - started) / batch * 1000)
        results[str(batch)] = {
            name: {"ms_per_image": median, "share_of_model": median / model_ms_per_image}
            for name, median in ((name, statistics.median(values)) for name, values in timed.items())
        }
    return {
        "classes": ensemble.num_classes,
        "members": len(ensemble.members),
        "model_ms_per_image": model_ms_per_image,
        "by_batch": results,
    }
