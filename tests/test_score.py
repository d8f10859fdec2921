"""`productrec score`: the service's engine over a folder or manifest, per-file errors, resumable output."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from serving_helpers import settings_for

from app.cli import main
from app.engine.ensemble import Ensemble
from app.contract.preprocess import decode_image
from app.score import ResultWriter, iter_sources, score
from app.score_output import CSV_FIELDS

N_IMAGES = 10


@pytest.fixture(scope="module")
def folder(fmnist_test_images, tmp_path_factory) -> Path:
    """Images in a folder and a subfolder, a file that is not an image, and a file that is not a candidate."""
    root = tmp_path_factory.mktemp("score") / "images"
    pairs = zip(fmnist_test_images.images[::4], fmnist_test_images.labels[::4])
    for index, (data, label) in enumerate(list(pairs)[:N_IMAGES]):
        directory = root / ("shelf" if index % 2 else "")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{index:02d}_{label}.png").write_bytes(data)
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "README.txt").write_text("not scored")
    return root


@pytest.fixture(scope="module")
def engine(trained_repository) -> Ensemble:
    return Ensemble.load(trained_repository, "cpu")


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(folder: Path, out: Path, repository: Path, **options) -> tuple:
    settings = settings_for(repository, decode_workers=1, max_batch_size=4)
    return score(folder, out, settings, progress=False, **{"top_k": 3, **options})


def test_folder_to_csv_matches_the_engine_and_records_errors(folder, trained_repository, engine, tmp_path) -> None:
    out = tmp_path / "results.csv"
    summary = run(folder, out, trained_repository)
    assert (summary.scored, summary.failed, summary.skipped) == (N_IMAGES, 1, 0)
    rows = read_rows(out)
    assert [row["path"] for row in rows] == [source.key for source in iter_sources(folder)]
    assert len(rows) == N_IMAGES + 1 and any(row["path"].startswith("shelf/") for row in rows)
    broken = next(row for row in rows if row["path"] == "broken.jpg")
    assert broken["error"].startswith("unsupported_image:") and broken["prediction"] == ""
    in_chans = max(member.manifest.preprocess.in_chans for member in engine.members)
    for row in rows:
        if row["path"] == "broken.jpg":
            continue
        image = decode_image((folder / row["path"]).read_bytes(), in_chans, 10**8)
        _, (ranking,) = engine.predict([image], top_k=3, tta=True)
        assert row["top_labels"].split("|") == [engine.labels[i] for i in ranking.indices]
        assert row["prediction"] == engine.labels[ranking.indices[0]] and int(row["index"]) == ranking.indices[0]
        assert row["top_votes"].split("|") == [str(v) for v in ranking.votes]
        assert row["error"] == ""


def test_interrupted_output_is_resumed_without_duplicates(folder, trained_repository, tmp_path) -> None:
    out = tmp_path / "results.jsonl"
    run(folder, out, trained_repository, tta=False)
    complete = out.read_text().splitlines()
    # Keep 4 full lines and half of the 5th, as a killed run would leave it.
    out.write_text("\n".join(complete[:4]) + "\n" + complete[4][:25])
    summary = run(folder, out, trained_repository, tta=False)
    assert (summary.skipped, summary.scored + summary.failed) == (4, len(complete) - 4)
    assert out.read_text().splitlines() == complete
    again = run(folder, out, trained_repository, tta=False)
    assert (again.scored, again.failed, again.skipped) == (0, 0, len(complete))


def test_parquet_output_has_the_csv_columns_typed_and_resumes_from_its_complete_parts(
    folder, trained_repository, tmp_path, monkeypatch
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr("app.score_output.PARQUET_ROWS_PER_PART", 4)
    out, csv_out = tmp_path / "results.parquet", tmp_path / "results.csv"
    run(folder, out, trained_repository, tta=False)
    run(folder, csv_out, trained_repository, tta=False)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3  # 11 rows in parts of 4
    complete = pq.read_table(out).to_pylist()
    assert tuple(complete[0]) == CSV_FIELDS
    for row, text in zip(complete, read_rows(csv_out)):
        assert row["path"] == text["path"] and (row["error"] or "") == text["error"]
        if row["prediction"] is not None:
            assert "|".join(row["top_labels"]) == text["top_labels"] and f"{row['score']:.6g}" == text["score"]
            assert isinstance(row["index"], int) and row["top_votes"] == [int(v) for v in text["top_votes"].split("|")]
    # An interrupted run: its last part never renamed into place, a temporary file left behind.
    parts[-1].rename(out / ".part-00002.parquet.tmp")
    summary = run(folder, out, trained_repository, tta=False)
    assert (summary.skipped, summary.scored + summary.failed) == (8, 3)
    assert not list(out.glob(".*.tmp"))
    assert pq.read_table(out).to_pylist() == complete


def test_manifest_with_labels_and_a_missing_file(folder, trained_repository, tmp_path) -> None:
    manifest = tmp_path / "manifest.csv"
    present = sorted(folder.glob("*.png"))[:2]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerow([str(present[0]), "Ankle boot"])  # absolute
        writer.writerow([present[1].name, "Shirt"])  # relative to the manifest's folder
        writer.writerow(["gone.png", "Bag"])
    (tmp_path / present[1].name).write_bytes(present[1].read_bytes())
    out = tmp_path / "results.jsonl"
    summary = run(manifest, out, trained_repository)
    assert (summary.scored, summary.failed) == (2, 1)
    rows = read_rows(out)
    assert [row["label"] for row in rows] == ["Ankle boot", "Shirt", "Bag"]
    assert rows[2]["error"]["error"] == "unreadable_file" and "labels" not in rows[2]
    assert len(rows[0]["labels"]) == 3 and rows[0]["error"] is None


def test_output_format_and_manifest_columns_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        ResultWriter(tmp_path / "results.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match="'path' column"):
        list(iter_sources(bad))


def test_cli_scores_and_reports_user_errors(folder, trained_repository, tmp_path, capsys) -> None:
    out = tmp_path / "cli.csv"
    common = ["--repository", str(trained_repository), "--decode-workers", "1", "--no-progress", "--top-k", "2"]
    assert main(["score", str(folder), "--out", str(out), "--no-tta", *common]) == 0
    assert f"{N_IMAGES} scored, 1 failed" in capsys.readouterr().out
    assert len(read_rows(out)) == N_IMAGES + 1
    for argv in (
        ["score", str(folder), "--out", str(tmp_path / "x.txt"), *common],
        ["score", str(tmp_path / "missing"), "--out", str(out), *common],
        ["score", str(folder), "--out", str(out), *common, "--decode-workers", "0"],
        ["score", str(folder), "--out", str(tmp_path / "y.csv"), "--repository", str(tmp_path), "--no-progress"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "error" in capsys.readouterr().err


def test_engine_ray_without_ray_names_the_extra(folder, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "app.score_ray", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(folder), "--out", str(tmp_path / "r.csv"), "--engine", "ray", "--repository", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "pip install 'productrec[ray]'" in capsys.readouterr().err
