"""``productrec score --engine ray``: a local Ray cluster scores 500 real images like the local engine.

Marked ``ray`` (needs ``productrec[ray]``): one Ray instance (``ray_session``) serves the whole
module, so its start-up (about 10 s on 2 cores) is paid once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_helpers import assert_same_ranking, encode, png_claiming_size, scan_bomb_jpeg, settings_for

pytest.importorskip("ray")

from app.cli import main  # noqa: E402
from app.score import iter_sources, score  # noqa: E402
from app.score_output import ResultWriter  # noqa: E402
from app.score_ray import RayOptions, ray_session, score_ray  # noqa: E402

pytestmark = pytest.mark.ray

N_IMAGES = 500
RESUMED = 100  # records already in the Ray engine's output before it starts
# File name -> the error code both engines must record for it.
BAD_FILES = {
    "broken.jpg": "unsupported_image",
    "empty.png": "unsupported_image",
    "truncated.png": "unsupported_image",
    "huge.png": "image_too_large",
    "scan_bomb.jpg": "image_too_complex",
}


@pytest.fixture(scope="module")
def catalogue(fmnist_dir, tmp_path_factory) -> Path:
    """500 Fashion-MNIST test images as PNGs in one folder per class, plus the bad files of ``BAD_FILES``."""
    from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist

    root = tmp_path_factory.mktemp("catalogue") / "images"
    _, _, images, labels = load_fashion_mnist(fmnist_dir)
    for index in range(N_IMAGES):
        folder = root / FASHION_MNIST_LABELS[labels[index]].replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.png").write_bytes(encode(Image.fromarray(images[index])))
    png = encode(Image.fromarray(images[0]))
    contents = {
        "broken.jpg": b"not a jpeg at all",
        "empty.png": b"",
        "truncated.png": png[: len(png) // 2],
        "huge.png": png_claiming_size(100_000, 100_000),
        "scan_bomb.jpg": scan_bomb_jpeg(64, 64, 500),
    }
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def settings(trained_repository):
    return settings_for(trained_repository, decode_workers=1, max_batch_size=32, intra_op_threads=1)


@pytest.fixture(scope="module")
def local_ray(settings):
    with ray_session(RayOptions(cpus=3), settings):  # a decode actor and up to 2 inference actors
        yield


def by_path(path: Path) -> dict[str, dict]:
    return {record["path"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_ray_engine_scores_like_the_local_engine_and_resumes(catalogue, settings, local_ray, tmp_path) -> None:
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    local = score(catalogue, local_out, settings, top_k=5, progress=False)
    assert (local.scored, local.failed) == (N_IMAGES, len(BAD_FILES))
    expected = by_path(local_out)
    keys = [source.key for source in iter_sources(catalogue)]
    with ResultWriter(ray_out) as writer:  # a run interrupted after RESUMED files
        for key in keys[:RESUMED]:
            writer.write(expected[key])

    summary = score_ray(catalogue, ray_out, settings, RayOptions(), top_k=5, progress=False)

    assert (summary.skipped, summary.scored + summary.failed) == (RESUMED, len(keys) - RESUMED)
    records = [json.loads(line) for line in ray_out.read_text().splitlines()]
    assert [record["path"] for record in records] == keys  # every file once, in the local engine's order
    for record in records[RESUMED:]:
        want = expected[record["path"]]
        assert (record["label"], record["error"]) == (want["label"], want["error"])
        if want["error"] is None:
            assert [member["name"] for member in record["members"]] == [member["name"] for member in want["members"]]
            assert_same_ranking(
                record["labels"],
                [label["index"] for label in want["labels"]],
                [label["score"] for label in want["labels"]],
                [label["votes"] for label in want["labels"]],
            )
    errors = {Path(key).name: record["error"]["error"] for key, record in zip(keys, records) if record["error"]}
    assert errors == BAD_FILES


def test_cli_engine_ray_scores_a_manifest_into_parquet(catalogue, trained_repository, local_ray, tmp_path, capsys) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = tmp_path / "manifest.csv"
    chosen = sorted(catalogue.glob("*/*.png"))[:6]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str(path), path.parent.name] for path in chosen)
        writer.writerow(["gone.png", "Bag"])
    common = ["--repository", str(trained_repository), "--decode-workers", "1", "--intra-op-threads", "1"]
    common += ["--no-progress", "--top-k", "3", "--batch-size", "4"]
    outputs = {engine: tmp_path / f"{engine}.parquet" for engine in ("local", "ray")}
    for engine, out in outputs.items():
        assert main(["score", str(manifest), "--out", str(out), "--engine", engine, "--ray-actors", "2", *common]) == 0
        assert "6 scored, 1 failed" in capsys.readouterr().out
    local_rows, ray_rows = (pq.read_table(out).to_pylist() for out in outputs.values())
    assert [row["path"] for row in ray_rows] == [row["path"] for row in local_rows]
    assert [row["path"] for row in ray_rows] == [str(path) for path in chosen] + ["gone.png"]
    assert [row["label"] for row in ray_rows] == [path.parent.name for path in chosen] + ["Bag"]
    assert ray_rows[-1]["error"].startswith("unreadable_file: FileNotFoundError") and ray_rows[-1]["prediction"] is None
    for ray_row, local_row in zip(ray_rows, local_rows):
        assert (ray_row["error"], ray_row["top_votes"]) == (local_row["error"], local_row["top_votes"])
        if local_row["top_scores"] is not None:
            np.testing.assert_allclose(ray_row["top_scores"], local_row["top_scores"], rtol=0, atol=1e-5)
