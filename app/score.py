"""``productrec score``: the service's engine over a folder or CSV manifest, without HTTP.

Streams: files are listed lazily (folders walked in sorted order, manifests
read row by row), decoded in chunks by the same time-limited decode workers as
the service while the previous chunk runs through the ensemble, and each
result is appended (and flushed) to the output as soon as it is known. Memory
stays bounded by two chunks, plus the set of paths already in the output.
Resumable: paths already in the output are skipped, a torn last line left by
an interrupted run is cut off. Unreadable or undecodable files are recorded
with their error instead of stopping the run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from app.contract.errors import error_record
from app.contract.ranking import Strategy, rank
from app.engine.ensemble import Ensemble, ProviderPreference
from app.contract.manifest import RepositoryError
from app.api.schemas import Prediction, Timings
from app.engine.decode_pool import DecodedCrops, DecodePool
from app.engine.pipeline import InferenceResult, encode_prediction

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

    def write(self, source: Source, prediction: Prediction | None, error: dict[str, str] | None) -> None:
        if self._csv is not None:
            self._csv.writerow(_csv_row(source, prediction, error))
        else:
            record = {"path": source.key, "label": source.label or None, "error": error}
            if prediction is not None:
                record.update(prediction.model_dump(include={"labels", "members", "strategy", "tta"}))
            self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _csv_row(source: Source, prediction: Prediction | None, error: dict[str, str] | None) -> dict[str, object]:
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


def _chunks(items: Iterable[Source], size: int) -> Iterator[list[Source]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _decode(pool: DecodePool, source: Source, plan, max_pixels: int) -> DecodedCrops | BaseException:
    try:
        data = source.file.read_bytes()
    except OSError as exc:
        return exc
    try:
        return pool.decode(data, plan, max_pixels)
    except Exception as exc:  # the error is recorded for this file; the run goes on
        return exc


def _error_record(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, OSError):
        return {"error": "unreadable_file", "detail": f"{type(exc).__name__}: {exc}"}
    return error_record(exc)


def score(
    input_path: Path,
    output: Path,
    repository: Path,
    top_k: int = 5,
    tta: bool = True,
    strategy: Strategy | None = None,
    provider: ProviderPreference = "auto",
    intra_op_threads: int = 0,
    intra_op_spinning: bool = False,
    batch_size: int = 32,
    decode_workers: int = 2,
    decode_timeout_s: float = 10.0,
    max_image_pixels: int = 40_000_000,
    progress: bool = True,
) -> ScoreSummary:
    """Score every image of ``input_path`` into ``output`` (.csv or .jsonl), skipping those already there."""
    started = time.perf_counter()
    ensemble = Ensemble.load(repository, provider, intra_op_threads, spinning=intra_op_spinning)
    strategy = strategy or ensemble.strategy
    top_k = min(top_k, ensemble.num_classes)
    plan = ensemble.crop_plan(tta)
    scored = failed = skipped = 0
    with (
        ResultWriter(output) as writer,
        DecodePool(decode_workers, decode_timeout_s) as pool,
        ThreadPoolExecutor(decode_workers) as threads,
    ):
        total = sum(1 for _ in iter_sources(input_path))

        def todo() -> Iterator[Source]:
            nonlocal skipped
            for source in iter_sources(input_path):
                if source.key in writer.done:
                    skipped += 1
                else:
                    yield source

        def submit(chunk: list[Source]) -> list[Future]:
            return [threads.submit(_decode, pool, source, plan, max_image_pixels) for source in chunk]

        with tqdm(total=total, unit="img", desc="scoring", disable=not progress) as bar:
            chunks = _chunks(todo(), batch_size)
            chunk = next(chunks, None)
            futures = submit(chunk) if chunk else []
            while chunk:
                following = next(chunks, None)
                following_futures = submit(following) if following else []  # decoded while this chunk runs
                outcomes = [future.result() for future in futures]
                predictions = _predict(ensemble, outcomes, top_k, tta, strategy)
                for source, outcome, prediction in zip(chunk, outcomes, predictions):
                    error = _error_record(outcome) if isinstance(outcome, BaseException) else None
                    writer.write(source, prediction, error)
                    failed += error is not None
                    scored += error is None
                bar.set_postfix(failed=failed, skipped=skipped, refresh=False)
                bar.update(skipped + scored + failed - bar.n)
                chunk, futures = following, following_futures
            bar.update(skipped + scored + failed - bar.n)
    summary = ScoreSummary(scored, failed, skipped, time.perf_counter() - started)
    log.info(
        "scored %d, failed %d, skipped %d (already in %s) in %.1f s", scored, failed, skipped, output, summary.seconds
    )
    return summary


def _predict(
    ensemble: Ensemble, outcomes: Sequence[DecodedCrops | BaseException], top_k: int, tta: bool, strategy: Strategy
) -> list[Prediction | None]:
    """One ensemble run over the chunk's decoded images; None where decoding failed."""
    good = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, DecodedCrops)]
    predictions: list[Prediction | None] = [None] * len(outcomes)
    if not good:
        return predictions
    run_started = time.perf_counter()
    probs = ensemble.member_probabilities([outcomes[index].crops for index in good], tta)  # type: ignore[union-attr]
    rankings = rank(probs, top_k, strategy)
    run_ms = (time.perf_counter() - run_started) * 1000
    for position, index in enumerate(good):
        decoded: DecodedCrops = outcomes[index]  # type: ignore[assignment]
        timings = Timings(decode_ms=decoded.seconds * 1000, queue_ms=0.0, inference_ms=run_ms, total_ms=run_ms)
        result = InferenceResult(probs[:, position], rankings[position])
        predictions[index] = encode_prediction(ensemble, result, strategy, tta, len(good), timings)
    return predictions


def score_command(args) -> int:
    """``productrec score``: settings from the environment and the options, then ``score``."""
    from app.cli import CommandError
    from app.cli_commands import settings_from_args

    settings = settings_from_args(args)
    if not args.input.exists():
        raise CommandError(f"{args.input}: no such folder or manifest")
    if args.top_k < 1 or args.batch_size < 1:
        raise CommandError("--top-k and --batch-size must be at least 1")
    try:
        summary = score(
            args.input,
            args.out,
            settings.repository,
            top_k=args.top_k,
            tta=args.tta,
            strategy=settings.strategy,
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
            intra_op_spinning=settings.intra_op_spinning,
            batch_size=args.batch_size,
            decode_workers=settings.decode_workers,
            decode_timeout_s=settings.decode_timeout_s,
            max_image_pixels=settings.max_image_pixels,
            progress=not args.no_progress,
        )
    except (RepositoryError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"{args.out}: {summary.scored} scored, {summary.failed} failed, "
        f"{summary.skipped} already there, in {summary.seconds:.1f} s"
    )
    return 0
