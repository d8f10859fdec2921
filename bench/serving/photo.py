"""The photo case: real photographs, a plain one-model path and 5 TTA sizes x 3 members, against LitServe.

    .venv/bin/python -m bench.serving.photo           # about 17 minutes on 2 cores

Measured in one run (the ratios compare figures of the same run):

- preprocessing alone: ``decode_crops`` in this process, CPU ms per photo by photo size, and the
  floor no libjpeg decoder goes under (decoding at 1/8 scale: the entropy decoding every scale pays);
- ProductRec's thread layouts (decode workers x onnxruntime intra-op threads) and a LitServe 0.2.19
  sweep (``bench/litserve_peer.py``: workers x onnxruntime threads x batching, the preprocessing as a
  LitServe user writes it), plain path, c=8; then ProductRec's layouts that give the model both cores on TTA;
- then rounds alternating ProductRec (its best layout for the workload), LitServe (its best), the same LitServe
  configuration given ProductRec's own ``decode_crops``, and the limit (raw onnxruntime on the same
  crops, at the batch sizes ProductRec formed) for the plain path, and ProductRec against the limit for TTA;
  the server not being measured is stopped (SIGSTOP) meanwhile, since an idle LitServe still polls;
  servers are compared at their steady rate (``LoadRound.steady_window``), the whole rounds' rate beside it;
- the tail: p50/p95/p99 at concurrency 64 on the small (default-ensemble-like) case.

Photos: ``bench.serving.photos.skimage_photos`` (6 pictures x 640x480, 1024x768, 2048x1536, JPEG q90).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from app.engine.ensemble import Ensemble
from bench import REPO
from bench.litserve_peer import user_crops
from bench.preprocess_cost import decoding_cost, preprocessing_cost
from bench.serving.cpu import CpuMeter, IdleSampler
from bench.serving.limit import Limit
from bench.serving.load import LoadRound, batch_schedule, post_images
from bench.serving.photos import PHOTO_SIZES, skimage_photos
from bench.serving.repository import ensure_repository, product_photos
from bench.serving.server import Service, settings_for

CONCURRENCY = 8
TAIL_CONCURRENCY = 64
# ProductRec: (decode workers, intra-op threads, inference threads); the first is the default on 2 cores
LAYOUTS = [(2, 2, 1), (1, 1, 1), (2, 1, 1), (1, 1, 2), (2, 1, 2)]
TTA_LAYOUTS = [(2, 2, 1), (1, 1, 2), (2, 1, 2)]  # those that give the model both cores (the rest: a third slower, plain)
PEER_SWEEP = [(workers, threads, batch) for workers in (1, 2) for threads in (1, 2) for batch in (1, 4)]


def latency_ms(replies: Sequence) -> dict[str, float]:
    values = np.asarray([reply.latency_s for reply in replies]) * 1000
    return {key: float(np.percentile(values, q)) for key, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def decode_floor(photos: Sequence[bytes], repeats: int = 5) -> float:
    """CPU ms per photo of decoding at 1/8 scale: the entropy decoding that no DCT scale avoids."""
    passes = []
    for _ in range(repeats):
        started = time.process_time()
        for data in photos:
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (1, 1))
            image.load()
        passes.append((time.process_time() - started) / len(photos) * 1000)
    return statistics.median(passes)


def with_interpolation(plan: list, interpolation: str) -> list:
    """``plan`` with every crop group resized with ``interpolation`` instead of its models' own."""
    return [(replace(config, interpolation=interpolation), sizes) for config, sizes in plan]


def peer_request(photo: bytes) -> tuple[str, dict[str, str], bytes]:
    return "/predict", {"Content-Type": "application/json"}, json.dumps({"image": base64.b64encode(photo).decode()}).encode()


def productrec(repository: Path, overrides: dict[str, str], log: Path) -> Service:
    _, env = settings_for(repository, {"intra_op_spinning": "false", **overrides})
    return Service(env, log)


def peer(repository: Path, workers: int, threads: int, batch: int, tta: bool, log: Path, preprocess: str = "user") -> Service:
    command = [sys.executable, str(REPO / "bench" / "litserve_peer.py"), str(repository), "--workers", str(workers),
               "--threads", str(threads), "--max-batch-size", str(batch), "--preprocess", preprocess, *(["--tta"] if tta else [])]
    return Service({}, log, command=command, ready_path="/health", own_group=True)


def load(service: Service, photos: Sequence[bytes], requests: int, concurrency: int = CONCURRENCY,
         is_peer: bool = False) -> LoadRound:
    post_images(service.port, photos, concurrency, 2 * concurrency, 300, 600, request=peer_request if is_peer else None)
    return post_images(service.port, photos, concurrency, requests, 300, 600,
                       request=peer_request if is_peer else None)


def summary(round_: LoadRound) -> dict:
    return {"images_per_s": round_.steady_images_per_s, "whole_round_images_per_s": round_.images_per_s,
            "latency_ms": latency_ms(round_.replies),
            "mean_batch": float(np.mean([reply.batch_size for reply in round_.replies]))}


def layout_name(workers: int, threads: int, batches: int) -> str:
    return f"{workers} decode workers, {batches} inference threads x {threads} intra-op threads"


def layout_sweep(repository: Path, photos: Sequence[bytes], requests: int, scratch: Path, layouts: Sequence[tuple[int, int, int]],
                 tta: bool) -> dict:
    """ProductRec's ``layouts`` (decode workers, intra-op threads, inference threads), c=8, one short load each."""
    results = {}
    for workers, threads, batches in layouts:
        name = layout_name(workers, threads, batches)
        layout = {"decode_workers": workers, "intra_op_threads": threads, "inference_threads": batches}
        overrides = {**{key: str(value) for key, value in layout.items()}, "tta": str(tta).lower()}
        with productrec(repository, overrides, scratch / "layout.log") as service:
            results[name] = {**layout, **summary(load(service, photos, requests))}
        print(f"  ProductRec{' TTA' if tta else ''} {name}: {results[name]['images_per_s']:.2f} img/s", flush=True)
    return results


def sweep(repository: Path, photos: Sequence[bytes], requests: int, scratch: Path) -> tuple[dict, dict]:
    """Plain path, c=8: ProductRec's layouts and LitServe's configurations, one short load each."""
    layouts, peers = layout_sweep(repository, photos, requests, scratch, LAYOUTS, tta=False), {}
    for workers, threads, batch in PEER_SWEEP:
        name = f"{workers} workers x {threads} threads, batch {batch}"
        with peer(repository, workers, threads, batch, False, scratch / "peer.log") as service:
            peers[name] = {"workers": workers, "threads": threads, "max_batch_size": batch,
                           **summary(load(service, photos, requests, is_peer=True))}
        print(f"  LitServe {name}: {peers[name]['images_per_s']:.1f} img/s", flush=True)
    return layouts, peers


def best_layout(layouts: dict) -> dict[str, str]:
    """The settings of the fastest of ``layouts`` (``layout_sweep``'s results)."""
    best = max(layouts.values(), key=lambda value: value["images_per_s"])
    return {key: str(best[key]) for key in ("decode_workers", "intra_op_threads", "inference_threads")}


def single_thread_ensemble(settings) -> Ensemble:
    """The ensemble with one intra-op thread per session, for the limit's parallel replays."""
    return Ensemble.from_settings(settings.model_copy(update={"intra_op_threads": 1}))


def limit_round(limit: Limit, round_: LoadRound) -> float:
    """Images/s of raw onnxruntime replaying the batch sizes ``round_`` formed in its steady part: the best of two
    replays on the service's session options and two with one single-thread call per core at a time."""
    schedule = batch_schedule(round_.steady_replies())
    seconds = [limit.run(schedule)[0] for _ in range(2)] + [limit.run_parallel(schedule) for _ in range(2)]
    return sum(schedule) / min(seconds)


@contextmanager
def paused(services: Iterable[Service]) -> Iterator[None]:
    """Every one of ``services`` stopped for the block (``Service.paused``): only the server measured runs."""
    with ExitStack() as stack:
        for service in services:
            stack.enter_context(service.paused())
        yield


def rounds(service: Service, limit: Limit, photos: Sequence[bytes], requests: int, count: int,
           peers: dict[str, Service] | None = None) -> dict:
    """``count`` rounds of ProductRec, each peer (name -> service) and the limit, alternating.

    Servers are compared at their steady rate (``LoadRound.steady_window``: the load whole, its drain left out),
    the whole round's rate kept beside it, with the machine's idle share in ProductRec's steady part and drain
    and the CPU ms per image of each role (``CpuMeter``: event loop, decode workers, load generator, the rest).
    """
    peers = peers or {}
    result: dict[str, list] = {"steady": [], "whole": [], "limit": [], "latency": [], "idle_steady": [], "idle_drain": [], "cpu": []}
    meter = CpuMeter(service, use_py_spy=False)  # the main thread is told apart; inference threads are "other service threads"
    peer_rounds: dict[str, list[LoadRound]] = {name: [] for name in peers}
    with paused(peers.values()):
        load(service, photos, 2 * CONCURRENCY)
        limit.run([CONCURRENCY])
    for _ in range(count):
        with paused(peers.values()):
            before = meter.snapshot()
            with IdleSampler(0.05) as idle:
                served = post_images(service.port, photos, CONCURRENCY, requests, 300, 600)
            roles = meter.roles(before, meter.snapshot(), served.client_cpu_s)
            result["cpu"].append({role: seconds * 1000 / len(served.replies) for role, seconds in roles.items()})
            result["steady"].append(served.steady_images_per_s)
            result["whole"].append(served.images_per_s)
            result["latency"] += served.replies
            window = served.steady_window()  # there is one: main() checks the round's length
            result["idle_steady"].append(idle.share(window.start, window.end))
            result["idle_drain"].append(idle.share(window.end, max(served.completions)))
            result["limit"].append(limit_round(limit, served))
        for name, peer_service in peers.items():
            with paused([service, *(other for other in peers.values() if other is not peer_service)]):
                peer_rounds[name].append(post_images(peer_service.port, photos, CONCURRENCY, requests, 300, 600, request=peer_request))
    point = {
        "productrec_images_per_s": result["steady"],
        "productrec_whole_round_images_per_s": result["whole"],
        "limit_images_per_s": result["limit"],
        "ratio_to_limit": [p / q for p, q in zip(result["steady"], result["limit"])],
        "ratio_to_limit_whole_round": [p / q for p, q in zip(result["whole"], result["limit"])],
        "idle_share_steady": result["idle_steady"],
        "idle_share_drain": result["idle_drain"],
        "cpu_ms_per_image": result["cpu"],
        "latency_ms": latency_ms(result["latency"]),
    }
    for name, served_rounds in peer_rounds.items():  # e.g. litserve_images_per_s, ratio_to_litserve, litserve_latency_ms
        point[f"{name}_images_per_s"] = [round_.steady_images_per_s for round_ in served_rounds]
        point[f"{name}_whole_round_images_per_s"] = [round_.images_per_s for round_ in served_rounds]
        point[f"ratio_to_{name}"] = [p / q for p, q in zip(result["steady"], point[f"{name}_images_per_s"])]
        point[f"{name}_latency_ms"] = latency_ms([reply for round_ in served_rounds for reply in round_.replies])
    return point


class _Latency:
    def __init__(self, seconds: float) -> None:
        self.latency_s = seconds


def tail(cache: Path, fmnist_dir: Path, requests: int, scratch: Path) -> dict:
    """p50/p95/p99 at concurrency 64 on the small ensemble: the client's latency and the service's own."""
    repository = ensure_repository("small", cache, fmnist_dir)
    photos = product_photos(fmnist_dir, 256, None)
    with productrec(repository, {}, scratch / "tail.log") as service:
        round_ = load(service, photos, requests, TAIL_CONCURRENCY)
    server = [_Latency(reply.timings["total_ms"] / 1000) for reply in round_.replies]
    client, inside = latency_ms(round_.replies), latency_ms(server)
    return {"concurrency": TAIL_CONCURRENCY, "images": len(round_.replies),
            "images_per_s": len(round_.replies) / round_.wall_s, "client_latency_ms": client,
            "service_latency_ms": inside, "p99_over_p50": client["p99"] / client["p50"]}


def measure(args: argparse.Namespace) -> dict:
    photos = skimage_photos()
    plain_repo = ensure_repository("photo-plain", args.cache, args.fmnist_dir)
    tta_repo = ensure_repository("photo-tta", args.cache, args.fmnist_dir)
    plain_plan = Ensemble.load(plain_repo, "cpu").crop_plan(tta=False)
    tta_plan = Ensemble.load(tta_repo, "cpu").crop_plan(tta=True)
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.serving.photo " + " ".join(args.argv),
        "concurrency": CONCURRENCY,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": " ".join(f"{v:.1f}" for v in os.getloadavg())},
        "photos": {"count": len(photos), "sizes": ["x".join(map(str, size)) for size in PHOTO_SIZES],
                   "mean_kib": float(np.mean([len(p) for p in photos]) / 1024)},
        "preprocess_cpu_ms": {"plain": preprocessing_cost(photos, plain_plan), "tta": preprocessing_cost(photos, tta_plan),
                              "plain_user": preprocessing_cost(photos, plain_plan, crops=user_crops),
                              "tta_user": preprocessing_cost(photos, tta_plan, crops=user_crops),
                              "decode_plain": decoding_cost(photos, plain_plan), "decode_tta": decoding_cost(photos, tta_plan),
                              "decode_floor": decode_floor(photos),
                              # the photo models keep timm's bicubic; ProductRec trains bilinear by default (the shipped ensemble)
                              "plain_bilinear": preprocessing_cost(photos, with_interpolation(plain_plan, "bilinear")),
                              "tta_bilinear": preprocessing_cost(photos, with_interpolation(tta_plan, "bilinear"))},
    }
    print("preprocessing CPU ms per photo:", json.dumps(results["preprocess_cpu_ms"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="photo-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        layouts, peers = sweep(plain_repo, photos, args.sweep_requests, scratch)
        best_peer = max(peers.values(), key=lambda value: value["images_per_s"])
        results.update(layouts=layouts, litserve_sweep=peers)
        layout = results["chosen_layout"] = best_layout(layouts)
        settings, _ = settings_for(plain_repo, {"tta": "false", "intra_op_spinning": "false"})
        peer_options = (plain_repo, best_peer["workers"], best_peer["threads"], best_peer["max_batch_size"], False)
        with productrec(plain_repo, {**layout, "tta": "false"}, scratch / "plain.log") as service:
            limit = Limit(Ensemble.from_settings(settings), photos, settings, single_thread_ensemble(settings))
            with peer(*peer_options, scratch / "peer.log") as other:  # one peer up at a time (paused while not measured)
                results["plain"] = rounds(service, limit, photos, args.requests, args.rounds, {"litserve": other})
            print("plain:", json.dumps(results["plain"]), flush=True)
            with peer(*peer_options, scratch / "peer-service.log", preprocess="service") as other:
                results["plain_service_peer"] = rounds(service, limit, photos, args.requests, args.rounds, {"litserve": other})
            print("plain, LitServe with decode_crops:", json.dumps(results["plain_service_peer"]), flush=True)
        # TTA's own layout: its batches are ~50x the plain path's work, and one two-thread session, which waits at
        # every operator for its slower thread, loses more to the decode workers there (see docs/serving-benchmark.md)
        results["tta_layouts"] = layout_sweep(tta_repo, photos, args.tta_sweep_requests, scratch, TTA_LAYOUTS, tta=True)
        tta_layout = results["chosen_tta_layout"] = best_layout(results["tta_layouts"])
        settings, _ = settings_for(tta_repo, {"tta": "true", "intra_op_spinning": "false"})
        with productrec(tta_repo, {**tta_layout, "tta": "true"}, scratch / "tta.log") as service:
            limit = Limit(Ensemble.from_settings(settings), photos, settings, single_thread_ensemble(settings))
            results["tta"] = rounds(service, limit, photos, args.tta_requests, args.rounds)
        print("tta:", json.dumps(results["tta"]), flush=True)
        if not args.no_tail:
            results["tail"] = tail(args.cache, args.fmnist_dir, args.tail_requests, scratch)
            print("tail:", json.dumps(results["tail"]), flush=True)
    results["machine"]["loadavg_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.photo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=160, help="plain path: images per round and server")
    parser.add_argument("--tta-requests", type=int, default=96, help="TTA: images per round")
    parser.add_argument("--sweep-requests", type=int, default=96, help="images per sweep configuration")
    parser.add_argument("--tta-sweep-requests", type=int, default=48, help="TTA: images per layout tried")
    parser.add_argument("--tail-requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tail", action="store_true")
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "serving-bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving-photo.json")
    args = parser.parse_args(argv)
    for option in ("requests", "tta_requests", "sweep_requests", "tta_sweep_requests"):
        if getattr(args, option) < 3 * CONCURRENCY:  # LoadRound.steady_window
            parser.error(f"--{option.replace('_', '-')} must be at least {3 * CONCURRENCY}: a round needs a steady part")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
