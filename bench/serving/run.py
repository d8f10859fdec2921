"""Measuring: one point (rounds of end-to-end load and the limit, alternating), then a whole case."""

from __future__ import annotations

import argparse
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from app.engine.ensemble import Ensemble
from bench import REPO
from bench.serving.cases import BATCHING, TARGET_CONCURRENCY, Case
from bench.serving.cpu import CpuMeter
from bench.serving.floor import http_floors
from bench.serving.limit import LIMIT_REPLAYS, Limit, ranking_cost, session_options_check, session_variants
from bench.serving.load import batch_schedule, post_images, sample_response
from bench.serving.profile import profile_service
from bench.serving.repository import ensure_repository, product_photos
from bench.serving.results import is_target
from bench.serving.server import Service, settings_for

SERVICE_SETTINGS_REPORTED = (
    "max_batch_size",
    "max_queue_delay_ms",
    "intra_op_threads",
    "intra_op_spinning",
    "inter_op_threads",
    "decode_workers",
)


@dataclass
class Point:
    """What the rounds of one point add up: images, times, latencies, batch sizes, CPU by role."""

    case: str
    endpoint: str  # "predict" (one image per request) or "batch" (/v1/predict/batch)
    per_request: int  # images per request
    batching: str
    concurrency: int
    images: int = 0
    e2e_wall_s: float = 0.0
    limit_wall_s: float = 0.0
    limit_cpu_s: float = 0.0
    round_ratios: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def breakdown(self, client_ms: float) -> dict[str, float]:
        """Mean ms per image of each part of a request, from the timings the responses carry."""
        timing = {key: float(np.mean([t[key] for t in self.timings])) for key in self.timings[0]}
        return {
            "http_and_json_ms": client_ms - timing["total_ms"],
            "decode_ms": timing["decode_ms"],
            "decode_wait_and_handoff_ms": timing["total_ms"]
            - timing["decode_ms"]
            - timing["queue_ms"]
            - timing["inference_ms"],
            "queue_ms": timing["queue_ms"],
            "inference_ms": timing["inference_ms"],
            "client_latency_ms": client_ms,
        }

    def summary(self) -> dict:
        latencies = np.asarray(self.latencies_s) * 1000
        images_per_s = self.images / self.e2e_wall_s
        limit_per_s = self.images / self.limit_wall_s
        client_ms = float(latencies.mean())
        return {
            "case": self.case,
            "endpoint": self.endpoint,
            "images_per_request": self.per_request,
            "batching": self.batching,
            "concurrency": self.concurrency,
            "images": self.images,
            "images_per_s": images_per_s,
            "limit_images_per_s": limit_per_s,
            "ratio": images_per_s / limit_per_s,
            "round_ratios": self.round_ratios,
            "latency_ms": {
                "p50": float(np.percentile(latencies, 50)),
                "p95": float(np.percentile(latencies, 95)),
                "p99": float(np.percentile(latencies, 99)),
                "mean": client_ms,
            },
            "mean_batch_size": float(np.mean(self.batch_sizes)),
            "batch_sizes": dict(sorted(Counter(self.batch_sizes).items())),
            "latency_breakdown_ms": self.breakdown(client_ms),
            "cpu_ms_per_image": {role: seconds / self.images * 1000 for role, seconds in sorted(self.cpu_s.items())},
            "limit_cpu_ms_per_image": self.limit_cpu_s / self.images * 1000,
            "limit_ms_per_image": self.limit_wall_s / self.images * 1000,
            "e2e_ms_per_image": self.e2e_wall_s / self.images * 1000,
        }


def measure_point(
    service: Service,
    meter: CpuMeter,
    limit: Limit,
    photos: Sequence[bytes],
    case: Case,
    batching: str,
    concurrency: int,
    requests: int,
    progress: tqdm,
    per_request: int = 1,
) -> dict:
    """Warm up, then ``case.rounds`` rounds of (end-to-end load, limit on the batch sizes it formed).

    ``requests`` counts images; ``per_request`` > 1 posts them that many at a time to /v1/predict/batch.
    """
    endpoint = "predict" if per_request == 1 else "batch"
    progress.set_postfix_str(f"{endpoint}, batching {batching}, concurrency {concurrency}")
    warmup = post_images(
        service.port, photos, concurrency, concurrency * per_request, case.round_timeout_s, case.request_timeout_s,
        per_request=per_request,
    )
    meter.refresh_names()
    limit.run([max(batch_schedule(warmup.replies))])  # onnxruntime sizes its buffers for the largest batch
    point = Point(case.name, endpoint, per_request, batching, concurrency)
    per_round = max(per_request, requests // case.rounds)
    for _ in range(case.rounds):
        before = meter.snapshot()
        load = post_images(
            service.port, photos, concurrency, per_round, case.round_timeout_s, case.request_timeout_s,
            on_reply=lambda: progress.update(1), per_request=per_request,
        )
        after = meter.snapshot()
        for role, seconds in meter.roles(before, after, load.client_cpu_s).items():
            point.cpu_s[role] += seconds
        schedule = batch_schedule(load.replies)
        images = len(load.replies)
        # the best of a few replays: the least disturbed estimate of what raw onnxruntime can do
        limit_wall, limit_cpu = min(limit.run(schedule, on_batch=progress.update) for _ in range(LIMIT_REPLAYS))
        point.images += images
        point.e2e_wall_s += load.wall_s
        point.limit_wall_s += limit_wall * images / sum(schedule)
        point.limit_cpu_s += limit_cpu * images / sum(schedule)
        point.round_ratios.append((images / load.wall_s) / (sum(schedule) / limit_wall))
        point.latencies_s += [reply.latency_s for reply in load.replies]
        point.batch_sizes += [reply.batch_size for reply in load.replies]
        point.timings += [reply.timings for reply in load.replies]
    return point.summary()


@dataclass(frozen=True)
class Load:
    """The images of each point of a case: per concurrency on /v1/predict, and on /v1/predict/batch."""

    concurrency: tuple[int, ...]
    requests: dict[int, int]  # /v1/predict images by concurrency
    batch: dict[int, int]  # /v1/predict/batch images by concurrency (batching on only)

    @classmethod
    def of(cls, case: Case, args: argparse.Namespace) -> "Load":
        concurrency = tuple(args.concurrency or case.concurrency)
        default = case.requests[max(case.requests)]
        requests = {c: args.requests or case.requests.get(c, default) for c in concurrency}
        return cls(concurrency, requests, {c: requests.get(c, default) for c in case.batch_endpoint_concurrency})

    def total_images(self, case: Case, variants: int) -> int:
        """Images of the whole case, for the progress bar: the session-options check, then every round."""
        total = case.check_batch * case.check_repeats * case.check_passes * variants
        per_image = 1 + LIMIT_REPLAYS  # end-to-end, then the limit's replays
        measured = sum(self.requests[c] // case.rounds * case.rounds for c in self.concurrency) * len(BATCHING)
        measured += sum(n // case.rounds * case.rounds for n in self.batch.values())
        return total + per_image * measured

    def runs(self, case: Case, batching: str) -> list[tuple[int, int, int]]:
        """(concurrency, images, images per request) of each point of one service."""
        runs = [(c, self.requests[c], 1) for c in self.concurrency]
        if batching == "on":
            runs += [(c, n, case.batch_endpoint_items) for c, n in self.batch.items()]
        return runs


def _report_point(progress: tqdm, case: Case, point: dict) -> None:
    progress.write(
        f"[{case.name}] {point['endpoint']:7} batching {point['batching']:3} c={point['concurrency']:2}: "
        f"{point['images_per_s']:8.1f} img/s, limit {point['limit_images_per_s']:8.1f} img/s, "
        f"ratio {point['ratio']:.2f}, p50 {point['latency_ms']['p50']:.0f} ms, "
        f"mean batch {point['mean_batch_size']:.1f}"
    )


def run_case(case: Case, args: argparse.Namespace, overrides: dict[str, str], scratch: Path) -> dict:
    """Every point of one ensemble, its session-options check, profile, HTTP floor and (50K classes) ranking cost."""
    repository = ensure_repository(case.name, args.cache, args.fmnist_dir)
    photos = product_photos(args.fmnist_dir, args.photos if case.photo_size is None else 32, case.photo_size)
    load = Load.of(case, args)
    settings, _ = settings_for(repository, overrides)
    tqdm.write(f"[{case.name}] loading the reference ensemble (the service's session options)")
    limit = Limit(Ensemble.from_settings(settings), photos, settings)
    points, profile = [], None
    total = load.total_images(case, len(session_variants(settings)))
    with tqdm(total=total, desc=f"{case.name}: images (limit + end-to-end)", unit="img", mininterval=1) as progress:
        progress.set_postfix_str("session options")
        session_check = session_options_check(
            limit, settings, case.check_batch, case.check_repeats, case.check_passes, progress
        )
        for batching, batching_overrides in BATCHING.items():
            service_settings, env = settings_for(repository, {**overrides, **batching_overrides})
            reported = service_settings.model_dump(include=set(SERVICE_SETTINGS_REPORTED))
            with Service(env, scratch / f"service-{case.name}-{batching}.log") as service:
                meter = CpuMeter(service, use_py_spy=not args.no_profile)
                for c, images, per_request in load.runs(case, batching):
                    point = measure_point(
                        service, meter, limit, photos, case, batching, c, images, progress, per_request
                    )
                    point["settings"] = reported
                    points.append(point)
                    _report_point(progress, case, point)
                if batching == "on":
                    response = sample_response(service.port, photos[0])
                    if case.name in args.profile_cases and not args.no_profile:
                        progress.set_postfix_str("profiling (not timed)")
                        profile_path = args.cache / f"profile-{case.name}.txt"
                        profile = profile_service(
                            service, photos, case, TARGET_CONCURRENCY, case.profile_requests, profile_path
                        )
        progress.set_postfix_str("HTTP floors")
        floors = http_floors(response, photos, case, scratch)
    result = {
        "case": case.name,
        "title": case.title,
        "repository": os.path.relpath(repository, REPO),
        "photo_bytes_mean": float(np.mean([len(photo) for photo in photos])),
        "members": [member.manifest.name for member in limit.ensemble.members],
        "tta_sizes": list(limit.ensemble.crop_groups(settings.tta)[0].sizes),
        "classes": limit.ensemble.num_classes,
        "session_options": session_check,
        "points": points,
        "profile": profile,
        "http_floors": floors,
        "preprocess_cpu_ms_per_image": limit.preprocess_cpu_ms,
    }
    if case.name == "realistic" or args.ranking_all:
        target = next((p for p in points if is_target(p)), points[0])
        result["ranking"] = ranking_cost(limit, target["limit_ms_per_image"])
    return result
