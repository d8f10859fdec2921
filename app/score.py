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
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
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

log = logging.getLogger("productrec.score")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
CSV_FIELDS = (
    "path",
    "label",
    "prediction",
    "index",
    "score",
    "votes",
    "top_labels",
    "top_scores",
    "top_votes",
    "members",
    "error",
)


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


class ResultWriter:
    """Appends results to a .csv or .jsonl file and knows which paths it already holds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower().lstrip(".")
        if self.format not in ("csv", "jsonl"):
            raise ValueError(f"{self.path}: the output must end in .csv or .jsonl")
        self.done = self._repair_and_read_done()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._handle, CSV_FIELDS) if self.format == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()

    def _repair_and_read_done(self) -> set[str]:
        if not self.path.exists():
            return set()
        with open(self.path, "rb+") as handle:
            data_end = handle.seek(0, os.SEEK_END)
            if data_end:
                handle.seek(max(0, data_end - 1))
                if handle.read(1) != b"\n":  # an interrupted run left half a line: drop it
                    handle.seek(0)
                    handle.truncate(handle.read().rfind(b"\n") + 1)
        with open(self.path, newline="") as handle:
            if self.format == "csv":
                return {row["path"] for row in csv.DictReader(handle)}
            return {json.loads(line)["path"] for line in handle if line.strip()}

    def write(self, source: Source, result: ImageResult | None, error: dict[str, str] | None) -> None:
        if self._csv is not None:
            self._csv.writerow(_csv_row(source, result, error))
        else:
            record = {"path": source.key, "label": source.label or None, "error": error}
            if result is not None:
                fields = dataclasses.asdict(result)
                record.update({name: fields[name] for name in ("labels", "members", "strategy", "tta")})
            self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _csv_row(source: Source, prediction: ImageResult | None, error: dict[str, str] | None) -> dict[str, object]:
    row: dict[str, object] = {"path": source.key, "label": source.label}
    if error is not None:
        row["error"] = f"{error['error']}: {error['detail']}".replace("\n", " ")
    if prediction is not None:
        top = prediction.labels[0]
        row.update(
            prediction=top.label,
            index=top.index,
            score=f"{top.score:.6g}",
            votes=top.votes,
            top_labels="|".join(label.label for label in prediction.labels),
            top_scores="|".join(f"{label.score:.6g}" for label in prediction.labels),
            top_votes="|".join(str(label.votes) for label in prediction.labels),
            members="|".join(f"{member.name}:{member.label}" for member in prediction.members),
        )
    return row


async def _score_one(pipeline: Pipeline, source: Source, top_k: int, tta: bool) -> ImageResult | BaseException:
    try:
        data = await asyncio.to_thread(source.file.read_bytes)
    except OSError as exc:
        return UnreadableFileError(f"{type(exc).__name__}: {exc}")
    (outcome,) = await pipeline.predict([data], top_k, tta)
    return outcome


async def _score_sources(
    pipeline: Pipeline, sources: Iterator[Source], writer: ResultWriter, top_k: int, tta: bool, window: int, bar: tqdm
) -> tuple[int, int]:
    """Score ``sources`` with at most ``window`` images in flight, writing results in input order."""
    scored = failed = 0
    in_flight: deque[tuple[Source, asyncio.Task]] = deque()

    def write_oldest() -> None:
        nonlocal scored, failed
        source, task = in_flight.popleft()
        outcome = task.result()
        error = error_record(outcome) if isinstance(outcome, BaseException) else None
        writer.write(source, None if error else outcome, error)
        failed += error is not None
        scored += error is None
        bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    for source in sources:
        in_flight.append((source, asyncio.create_task(_score_one(pipeline, source, top_k, tta))))
        if len(in_flight) >= window:
            await asyncio.wait([in_flight[0][1]])
            write_oldest()
    while in_flight:
        await asyncio.wait([in_flight[0][1]])
        write_oldest()
    return scored, failed


def score(
    input_path: Path, output: Path, settings: Settings, top_k: int = 5, tta: bool = True, progress: bool = True
) -> ScoreSummary:
    """Score every image of ``input_path`` into ``output`` (.csv or .jsonl), skipping those already there.

    ``settings`` are the service's: repository, providers and threads, decode workers and limits, and
    ``max_batch_size`` (images per ensemble run).
    """
    started = time.perf_counter()
    ensemble = Ensemble.from_settings(settings)
    top_k = min(top_k, ensemble.num_classes)
    window = min(2 * settings.max_batch_size, settings.queue_limit)
    with ResultWriter(output) as writer:
        total = skipped = 0
        for source in iter_sources(input_path):
            total += 1
            skipped += source.key in writer.done
        todo = (source for source in iter_sources(input_path) if source.key not in writer.done)

        async def run() -> tuple[int, int]:
            async with Pipeline(ensemble, settings, ServingMetrics()) as pipeline:
                with tqdm(total=total, initial=skipped, unit="img", desc="scoring", disable=not progress) as bar:
                    return await _score_sources(pipeline, todo, writer, top_k, tta, window, bar)

        scored, failed = asyncio.run(run())
    summary = ScoreSummary(scored, failed, skipped, time.perf_counter() - started)
    log.info(
        "scored %d, failed %d, skipped %d (already in %s) in %.1f s", scored, failed, skipped, output, summary.seconds
    )
    return summary


def score_command(args) -> int:
    """``productrec score``: settings from the environment and the options, then ``score``."""
    from app.cli import CommandError
    from app.cli_commands import settings_from_args

    if not args.input.exists():
        raise CommandError(f"{args.input}: no such folder or manifest")
    if args.top_k < 1 or args.batch_size < 1:
        raise CommandError("--top-k and --batch-size must be at least 1")
    settings = settings_from_args(args, max_batch_size=args.batch_size)
    try:
        summary = score(args.input, args.out, settings, top_k=args.top_k, tta=args.tta, progress=not args.no_progress)
    except (RepositoryError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"{args.out}: {summary.scored} scored, {summary.failed} failed, "
        f"{summary.skipped} already there, in {summary.seconds:.1f} s"
    )
    return 0
