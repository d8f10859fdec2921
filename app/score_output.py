"""What ``productrec score`` writes, for either engine: one record per file, as CSV, JSONL or Parquet.

Both engines turn each file's outcome into the same record (``result_record``: the JSONL line),
and every format is written from that record, so the columns never depend on the engine.
CSV and Parquet hold the same flat columns (``CSV_FIELDS``): CSV as text (lists joined with
``|``, scores to 6 significant digits), Parquet typed (lists, int64, float64).

Parquet cannot be appended to, so ``results.parquet`` is a folder of part files (the layout
Spark, pandas and Ray read as one table): rows are buffered and written as a new part every
``PARQUET_ROWS_PER_PART`` rows or ``PARQUET_PART_AGE_S`` seconds, each part under a temporary
name renamed once complete; an interrupted run loses only the rows of its unwritten part.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.pipeline import ImageResult

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
OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
PARQUET_ROWS_PER_PART = 4096
PARQUET_PART_AGE_S = 60.0

Record = dict[str, Any]


def result_record(key: str, label: str, result: "ImageResult | None", error: dict[str, str] | None) -> Record:
    """One file's outcome in JSON form (the JSONL line): its key, label, error, and the ranking when scored."""
    record: Record = {"path": key, "label": label or None, "error": error}
    if result is not None:
        record.update(
            labels=[dataclasses.asdict(label_score) for label_score in result.labels],
            members=[dataclasses.asdict(member) for member in result.members],
            strategy=result.strategy,
            tta=result.tta,
        )
    return record


def flat_row(record: Record) -> dict[str, Any]:
    """The CSV and Parquet columns of a record, typed (None where the file has no value)."""
    error = record["error"]
    row: dict[str, Any] = dict.fromkeys(CSV_FIELDS)
    row.update(path=record["path"], label=record["label"] or "")
    if error is not None:
        row["error"] = f"{error['error']}: {error['detail']}".replace("\n", " ")
    labels = record.get("labels")
    if labels:
        top = labels[0]
        row.update(
            prediction=top["label"],
            index=top["index"],
            score=top["score"],
            votes=top["votes"],
            top_labels=[label["label"] for label in labels],
            top_scores=[label["score"] for label in labels],
            top_votes=[label["votes"] for label in labels],
            members=[f"{member['name']}:{member['label']}" for member in record["members"]],
        )
    return row


def csv_row(record: Record) -> dict[str, str]:
    """``flat_row`` as CSV text: lists joined with ``|``, scores to 6 significant digits, None as empty."""
    return {name: _csv_text(value) for name, value in flat_row(record).items()}


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(_csv_text(item) for item in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def parquet_schema():
    """The Parquet schema of ``flat_row``."""
    import pyarrow as pa

    text, integer, real = pa.string(), pa.int64(), pa.float64()
    return pa.schema(
        [
            ("path", text),
            ("label", text),
            ("prediction", text),
            ("index", integer),
            ("score", real),
            ("votes", integer),
            ("top_labels", pa.list_(text)),
            ("top_scores", pa.list_(real)),
            ("top_votes", pa.list_(integer)),
            ("members", pa.list_(text)),
            ("error", text),
        ]
    )


class ResultWriter:
    """Appends records to a .csv or .jsonl file or a .parquet folder, and knows which paths it already holds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower().lstrip(".")
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"{self.path}: the output must end in .csv, .jsonl or .parquet")
        self._sink = _ParquetParts(self.path) if self.format == "parquet" else _LineFile(self.path, self.format)
        self.done: set[str] = self._sink.done

    def write(self, record: Record) -> None:
        self._sink.write(record)

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _LineFile:
    """CSV or JSONL, one line per record, flushed at once; a torn last line is cut off on opening."""

    def __init__(self, path: Path, format: str) -> None:
        self.path, self.format = path, format
        self.done = self._repair_and_read_done()
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._handle = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._handle, CSV_FIELDS) if format == "csv" else None
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

    def write(self, record: Record) -> None:
        if self._csv is not None:
            self._csv.writerow(csv_row(record))
        else:
            self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class _ParquetParts:
    """A folder of Parquet parts; rows are buffered until a part is full or old enough."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError as exc:
            raise ValueError(f"{path}: Parquet output needs pyarrow: pip install 'productrec[ray]'") from exc
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: a Parquet output is a folder of parts, and this is a file")
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.glob(".*.tmp"):  # a part an interrupted run was writing
            leftover.unlink()
        self._pq = pq
        self.path = path
        self.schema = parquet_schema()
        parts = sorted(path.glob("part-*.parquet"))
        self.done = {key for part in parts for key in pq.read_table(part, columns=["path"]).column("path").to_pylist()}
        self._next = 1 + max((int(part.stem.split("-")[1]) for part in parts), default=-1)
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def write(self, record: Record) -> None:
        if not self._rows:
            self._since = time.monotonic()
        self._rows.append(flat_row(record))
        if len(self._rows) >= PARQUET_ROWS_PER_PART or time.monotonic() - self._since > PARQUET_PART_AGE_S:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa

        name = f"part-{self._next:05d}.parquet"
        temporary = self.path / f".{name}.tmp"
        self._pq.write_table(pa.Table.from_pylist(self._rows, schema=self.schema), temporary)
        os.replace(temporary, self.path / name)
        self._next += 1
        self._rows = []

    def close(self) -> None:
        self._flush()
