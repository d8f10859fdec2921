"""``productrec score``: the service's pipeline over a folder or CSV manifest, without HTTP.

The same ``Pipeline`` as the HTTP service (decode workers, dynamic batcher,
ensemble, ranking), fed from files: sources are listed lazily (folders walked
in sorted order, manifests read row by row), a bounded window of images is in
flight at once, and each result is appended (and flushed) to the output in the
input's order as soon as it and those before it are known. Memory stays bounded
by the window, plus the set of paths already in the output. Resumable: paths
already in the output are skipped, a torn last line left by an interrupted run
is cut off. Unreadable or undecodable files are recorded with their error
instead of stopping the run.

``--engine ray`` runs the same stages as a Ray Data pipeline instead (``app.score_ray``);
both engines list sources, read files and write results with the functions here and in
``app.score_output``, so their outputs have the same keys, columns and errors.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from app.contract.errors import DomainError, error_record
from app.contract.manifest import RepositoryError
from app.core.config import Settings
from app.engine.ensemble import Ensemble
from app.engine.metrics import ServingMetrics
from app.engine.pipeline import ImageResult, Pipeline
from app.score_output import Record, ResultWriter, result_record

log = logging.getLogger("productrec.score")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Source:
    """One file to score: its key in the output, where it is, and its label when the manifest gives one."""

    key: str
    file: Path
    label: str = ""


class UnreadableFileError(DomainError):
    """A listed file could not be read."""

    status, code = 400, "unreadable_file"


@dataclass(frozen=True)
class ScoreSummary:
    scored: int
    failed: int
    skipped: int
    seconds: float


def iter_sources(input_path: Path) -> Iterator[Source]:
    """Image files of a folder (recursively, sorted) or the rows of a CSV manifest with a ``path`` column."""
    input_path = Path(input_path)
    if input_path.is_dir():
        for directory, subdirectories, files in os.walk(input_path):
            subdirectories.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    file = Path(directory) / name
                    yield Source(file.relative_to(input_path).as_posix(), file)
        return
    with open(input_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or ()):
            raise ValueError(f"{input_path}: a manifest needs a 'path' column (and optionally 'label')")
        for row in reader:
            path = Path(row["path"])
            yield Source(row["path"], path if path.is_absolute() else input_path.parent / path, row.get("label") or "")


def pending_sources(input_path: Path, done: set[str]) -> Iterator[Source]:
    """The sources of ``input_path`` whose keys are not in ``done`` (already in the output)."""
    return (source for source in iter_sources(input_path) if source.key not in done)


def read_source(file: Path) -> bytes:
    """The bytes of a listed file; ``UnreadableFileError`` when it cannot be read."""
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{type(exc).__name__}: {exc}") from exc


class Tally:
    """Writes records to the output, counting the scored and failed ones on a progress bar."""

    def __init__(self, writer: ResultWriter, bar: tqdm, skipped: int) -> None:
        self.writer, self.bar, self.skipped = writer, bar, skipped
        self.scored = self.failed = 0

    @classmethod
    def open(cls, input_path: Path, writer: ResultWriter, progress: bool) -> "Tally":
        """A tally whose bar counts every source of ``input_path``, those already in ``writer`` as done."""
        total = skipped = 0
        for source in iter_sources(input_path):
            total += 1
            skipped += source.key in writer.done
        return cls(writer, tqdm(total=total, initial=skipped, unit="img", desc="scoring", disable=not progress), skipped)

    def write(self, record: Record) -> None:
        self.writer.write(record)
        failed = record["error"] is not None
        self.failed += failed
        self.scored += not failed
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def summary(self, output: Path, started: float) -> ScoreSummary:
        summary = ScoreSummary(self.scored, self.failed, self.skipped, time.perf_counter() - started)
        log.info(
            "scored %d, failed %d, skipped %d (already in %s) in %.1f s",
            summary.scored, summary.failed, summary.skipped, output, summary.seconds,
        )
        return summary

    def __enter__(self) -> "Tally":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


async def _score_one(pipeline: Pipeline, source: Source, top_k: int, tta: bool) -> ImageResult | BaseException:
    try:
        data = await asyncio.to_thread(read_source, source.file)
    except UnreadableFileError as exc:
        return exc
    (outcome,) = await pipeline.predict([data], top_k, tta)
    return outcome


async def _score_sources(
    pipeline: Pipeline, sources: Iterator[Source], tally: "Tally", top_k: int, tta: bool, window: int
) -> None:
    """Score ``sources`` with at most ``window`` images in flight, writing results in input order."""
    in_flight: deque[tuple[Source, asyncio.Task]] = deque()

    def write_oldest() -> None:
        source, task = in_flight.popleft()
        outcome = task.result()
        error = error_record(outcome) if isinstance(outcome, BaseException) else None
        tally.write(result_record(source.key, source.label, None if error else outcome, error))

    for source in sources:
        in_flight.append((source, asyncio.create_task(_score_one(pipeline, source, top_k, tta))))
        if len(in_flight) >= window:
            await asyncio.wait([in_flight[0][1]])
            write_oldest()
    while in_flight:
        await asyncio.wait([in_flight[0][1]])
        write_oldest()


def score(
    input_path: Path, output: Path, settings: Settings, top_k: int = 5, tta: bool = True, progress: bool = True
) -> ScoreSummary:
    """Score every image of ``input_path`` into ``output`` (.csv, .jsonl or .parquet), skipping those already there.

    ``settings`` are the service's: repository, providers and threads, decode workers and limits, and
    ``max_batch_size`` (images per ensemble run).
    """
    started = time.perf_counter()
    ensemble = Ensemble.from_settings(settings)
    top_k = min(top_k, ensemble.num_classes)
    window = min(2 * settings.max_batch_size, settings.queue_limit)
    with ResultWriter(output) as writer, Tally.open(input_path, writer, progress) as tally:

        async def run() -> None:
            async with Pipeline(ensemble, settings, ServingMetrics()) as pipeline:
                await _score_sources(pipeline, pending_sources(input_path, writer.done), tally, top_k, tta, window)

        asyncio.run(run())
    return tally.summary(output, started)


def score_command(args) -> int:
    """``productrec score``: settings from the environment and the options, then the engine asked for."""
    from app.cli import CommandError
    from app.cli_commands import settings_from_args

    if not args.input.exists():
        raise CommandError(f"{args.input}: no such folder or manifest")
    if args.top_k < 1 or args.batch_size < 1:
        raise CommandError("--top-k and --batch-size must be at least 1")
    settings = settings_from_args(args, max_batch_size=args.batch_size)
    options = dict(top_k=args.top_k, tta=args.tta, progress=not args.no_progress)
    try:
        if args.engine == "ray":
            from app.score_ray import RayOptions, score_ray

            ray_options = RayOptions.from_args(args)
            summary = score_ray(args.input, args.out, settings, ray_options, **options)
        else:
            summary = score(args.input, args.out, settings, **options)
    except (RepositoryError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"{args.out}: {summary.scored} scored, {summary.failed} failed, "
        f"{summary.skipped} already there, in {summary.seconds:.1f} s"
    )
    return 0
