"""``productrec score --engine ray``: the offline scoring pipeline as a Ray Data job.

The stages are the local engine's, run by Ray instead of one process:

- sources: listed on the driver with ``app.score.iter_sources`` (the same keys and labels as
  the local engine; the keys already in the output are left out), handed to Ray as a dataset
  of ``{key, file, label}`` rows. On a cluster the files and the model repository must be
  reachable under the same paths on every node (a shared file system).
- decode: ``DecodeStage`` actors (``--decode-workers`` of them, one CPU each) read each file
  and decode and crop it through the service's own ``DecodePool`` with one worker: the header
  cost checks, the pixel limit and the per-image time budget (a worker that overruns is killed
  and replaced, and the image is recorded as ``decode_timeout``), exactly as the service and
  the local engine do. A plain Ray task could not stop a decoder stuck in C code short of
  killing the whole task, so the time limit needs the worker process.
- inference: ``InferenceStage`` actors (``--ray-actors``, each with ``--ray-gpus-per-actor``
  GPUs) load the ensemble once (onnxruntime sessions, on CUDA when they hold GPUs) and run
  ``Pipeline.infer`` and ``Pipeline.result`` on batches of ``--batch-size`` images, returning
  each file's record (``app.score_output.result_record``) as JSON.
- output: the driver streams the records, in input order, into the same ``ResultWriter`` as the
  local engine (CSV, JSONL or Parquet; resumable).

Without ``--ray-address`` Ray starts on this machine (loopback only, no dashboard, no usage
statistics) with one logical CPU per decode and inference actor unless ``--ray-cpus`` says
otherwise; with an address (``auto``, ``ray://HOST:PORT``) it joins that cluster. Either way the
``app`` package travels to the workers as a ``py_modules`` runtime environment, so they run this
checkout's code; the workers' Python needs productrec's serving dependencies installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import ray.data

from app.contract.errors import error_record
from app.contract.manifest import read_repository
from app.contract.preprocess import CropPlan
from app.core.config import Settings
from app.engine.ensemble import crop_plan_for
from app.score import ScoreSummary, Source, Tally, pending_sources, read_source
from app.score_output import ResultWriter, result_record

log = logging.getLogger("productrec.score.ray")

APP_PACKAGE = Path(__file__).resolve().parent
LOCAL_OBJECT_STORE_BYTES = 1024**3
MAX_BLOCKS = 10_000  # input blocks of one batch each, up to this many (each costs a little driver memory)

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class RayOptions:
    """Where Ray runs and how many inference actors it gets."""

    address: str | None = None  # None: start Ray on this machine
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus: int | None = None  # logical CPUs of a local start; None: one per decode and inference actor

    @classmethod
    def from_args(cls, args) -> "RayOptions":
        options = cls(args.ray_address, args.ray_actors, args.ray_gpus_per_actor, args.ray_cpus)
        if options.actors < 1 or options.gpus_per_actor < 0 or (options.cpus is not None and options.cpus < 1):
            raise ValueError("--ray-actors and --ray-cpus must be at least 1, --ray-gpus-per-actor at least 0")
        return options


def runtime_env() -> dict:
    """This checkout's ``app`` package, shipped to every worker (it comes first on their ``sys.path``)."""
    return {"py_modules": [str(APP_PACKAGE)]}


@contextmanager
def ray_session(options: RayOptions, settings: Settings) -> Iterator[None]:
    """Ray for one run: joined at ``options.address``, else started locally; a session already open is used as is."""
    if ray.is_initialized():
        yield
        return
    if options.address:
        ray.init(address=options.address, runtime_env=runtime_env(), configure_logging=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to the outside world
        ray.init(
            num_cpus=options.cpus or settings.decode_workers + options.actors,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env(),
            configure_logging=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


class DecodeStage:
    """Reads and decodes files in a ``DecodePool`` of one worker: the service's checks, limits and time budget."""

    def __init__(self, settings: Settings, plan: CropPlan) -> None:
        from app.engine.decode_pool import DecodePolicy, DecodePool

        self.pool = DecodePool(1, settings.decode_timeout_s, policy=DecodePolicy.from_settings(settings))
        self.plan = plan
        self.max_pixels = settings.max_image_pixels

    def __call__(self, batch: Batch) -> Batch:
        """Crops (zeros for a failed file) per crop group, and each file's error as JSON ("" when none)."""
        count = len(batch["key"])
        crops = [
            np.zeros((count, len(sizes), config.in_chans, config.input_size, config.input_size), np.float32)
            for config, sizes in self.plan
        ]
        errors = []
        for row, file in enumerate(batch["file"]):
            try:
                decoded = self.pool.decode(read_source(Path(file)), self.plan, self.max_pixels)
            except Exception as exc:  # every failure is the file's outcome, recorded like the local engine's
                errors.append(json.dumps(error_record(exc)))
                continue
            for group, group_crops in enumerate(decoded.crops):
                crops[group][row] = group_crops
            errors.append("")
        columns = {"key": batch["key"], "label": batch["label"], "error": np.array(errors, dtype=object)}
        return columns | {f"crops_{group}": group_crops for group, group_crops in enumerate(crops)}


class InferenceStage:
    """The ensemble, loaded once per actor, ranking batches of decoded files into output records."""

    def __init__(self, settings: Settings, top_k: int, tta: bool) -> None:
        from app.engine.ensemble import Ensemble
        from app.engine.metrics import ServingMetrics
        from app.engine.pipeline import Pipeline

        self.pipeline = Pipeline(Ensemble.from_settings(settings), settings, ServingMetrics())
        self.groups = len(self.pipeline.ensemble.crop_groups(tta))
        self.top_k, self.tta = top_k, tta

    def __call__(self, batch: Batch) -> Batch:
        """One JSON record per file, in the batch's order."""
        from app.engine.pipeline import InferenceRequest, Timings

        errors = [json.loads(text) if text else None for text in batch["error"]]
        decoded = [row for row, error in enumerate(errors) if error is None]
        results = {}
        if decoded:
            requests = [
                InferenceRequest([batch[f"crops_{group}"][row] for group in range(self.groups)], self.tta, self.top_k)
                for row in decoded
            ]
            started = time.perf_counter()
            try:
                inferred = self.pipeline.infer(requests)
            except Exception as exc:  # the local engine records a failed ensemble run per image, too
                errors = [error_record(exc) if row in decoded else error for row, error in enumerate(errors)]
            else:
                run_ms = (time.perf_counter() - started) * 1000
                timings = Timings(decode_ms=0.0, queue_ms=0.0, inference_ms=run_ms, total_ms=run_ms)  # not written out
                for row, inference in zip(decoded, inferred):
                    results[row] = self.pipeline.result(inference, self.tta, len(decoded), timings)
        records = [
            json.dumps(result_record(key, label, results.get(row), errors[row]))
            for row, (key, label) in enumerate(zip(batch["key"], batch["label"]))
        ]
        return {"record": np.array(records, dtype=object)}


def scoring_dataset(
    sources: list[Source], settings: Settings, options: RayOptions, plan: CropPlan, top_k: int, tta: bool
) -> ray.data.Dataset:
    """sources -> decode actors -> inference actors, records in input order."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the output in input order, as the local engine writes it
    context.enable_progress_bars = False  # the driver's own bar counts files
    batch_size = settings.max_batch_size
    items = [{"key": source.key, "file": str(source.file.resolve()), "label": source.label} for source in sources]
    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(items) / batch_size)))
    inference_resources = {"num_gpus": options.gpus_per_actor} if options.gpus_per_actor else {}
    if options.gpus_per_actor and settings.provider == "auto":
        settings = settings.model_copy(update={"provider": "cuda"})  # an actor given GPUs must use them
    return (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            DecodeStage,
            fn_constructor_kwargs={"settings": settings, "plan": plan},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=settings.decode_workers),
            num_cpus=1,
        )
        .map_batches(
            InferenceStage,
            fn_constructor_kwargs={"settings": settings, "top_k": top_k, "tta": tta},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=1,
            **inference_resources,
        )
    )


def score_ray(
    input_path: Path,
    output: Path,
    settings: Settings,
    options: RayOptions = RayOptions(),
    top_k: int = 5,
    tta: bool = True,
    progress: bool = True,
) -> ScoreSummary:
    """``app.score.score`` on Ray: the same output, columns, errors and resumption."""
    started = time.perf_counter()
    needed = settings.decode_workers + options.actors
    if options.address is None and options.cpus is not None and options.cpus < needed:
        raise ValueError(f"--ray-cpus {options.cpus} cannot hold {needed} actors (decode workers + inference actors)")
    _, members = read_repository(settings.repository)  # a bad repository fails here, before Ray starts
    plan = crop_plan_for(members, tta)
    top_k = min(top_k, members[0].manifest.num_classes)
    with ResultWriter(output) as writer, Tally.open(input_path, writer, progress) as tally:
        sources = list(pending_sources(input_path, writer.done))
        if sources:
            with ray_session(options, settings):
                dataset = scoring_dataset(sources, settings, options, plan, top_k, tta)
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    for text in batch["record"]:
                        tally.write(json.loads(text))
    return tally.summary(output, started)
