"""The HTTP side of scripts/docker-smoke.sh: real images in, labels checked.

  smoke_client.py images OUT_DIR [--count N] [--fmnist-dir DIR]
      write the first N Fashion-MNIST test images as PNG files (names carry the true label)
  smoke_client.py check BASE_URL REPOSITORY IMAGE...
      check /readyz and /v1/models, post the first image to /v1/predict and all of them (plus one
      file that is not an image) to /v1/predict/batch, and check every answer against the labels of
      the repository's manifests; exit 1 with the reason on the first failure
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from app.contract.manifest import read_repository

TIMEOUT_S = 60.0
NOT_AN_IMAGE = b"this is not an image\n"


class SmokeFailure(Exception):
    """A check failed; the message says which and what came back."""


def write_images(out: Path, count: int, fmnist_dir: Path) -> list[Path]:
    """PNG files of the first ``count`` Fashion-MNIST test images, as shot (the product on white)."""
    from PIL import Image

    from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist_as_shot

    _, _, images, labels = load_fashion_mnist_as_shot(fmnist_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        name = FASHION_MNIST_LABELS[labels[index]].replace("/", "-").replace(" ", "-").lower()
        path = out / f"fmnist-test-{index:05d}-{name}.png"
        Image.fromarray(images[index]).save(path)
        paths.append(path)
    return paths


def _json(response: httpx.Response, expected_status: int = 200) -> Any:
    if response.status_code != expected_status:
        raise SmokeFailure(
            f"{response.request.method} {response.request.url} answered {response.status_code}: {response.text[:500]}"
        )
    return response.json()


def check_prediction(prediction: dict[str, Any], labels: list[str], members: int, what: str) -> None:
    """Labels from the repository, index and name agreeing, ranked by votes then score; one top-1 per member."""
    ranked = prediction.get("labels") or []
    if not ranked:
        raise SmokeFailure(f"{what}: no labels in {prediction}")
    for item in ranked:
        if not 0 <= item["index"] < len(labels) or labels[item["index"]] != item["label"]:
            raise SmokeFailure(f"{what}: label {item} is not the repository's label {item['index']}")
        if not 0.0 <= item["score"] <= 1.0 or not 0 <= item["votes"] <= members:
            raise SmokeFailure(f"{what}: score or votes out of range in {item}")
    order = [(-item["votes"], -item["score"]) for item in ranked]
    if prediction.get("strategy") == "vote" and order != sorted(order):
        raise SmokeFailure(f"{what}: labels not ordered by votes, then score: {ranked}")
    if len(prediction.get("members") or []) != members:
        raise SmokeFailure(f"{what}: expected {members} member top-1s, got {prediction.get('members')}")


def check_service(base_url: str, repository: Path, images: list[Path]) -> list[str]:
    """Run every check; returns one line per image saying what the service answered."""
    spec, loaded = read_repository(repository)
    labels = loaded[0].manifest.labels
    members = len(loaded)
    top_k = min(3, len(labels))
    report = []
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S, trust_env=False) as client:
        ready = _json(client.get("/readyz"))
        if ready.get("ready") is not True or ready.get("members") != members:
            raise SmokeFailure(f"/readyz: expected {members} members ready, got {ready}")

        models = _json(client.get("/v1/models"))
        if models["labels"] != labels or len(models["members"]) != members:
            raise SmokeFailure(f"/v1/models does not describe {repository}: {models}")
        providers = sorted({p for member in models["members"] for p in member["providers"]})
        report.append(f"/v1/models: ensemble {models['ensemble']!r}, {members} members, providers {providers}")

        first = images[0]
        single = _json(client.post("/v1/predict", params={"top_k": top_k}, files={"file": (first.name, first.read_bytes(), "image/png")}))
        check_prediction(single, labels, members, f"/v1/predict {first.name}")
        if len(single["labels"]) != top_k:
            raise SmokeFailure(f"/v1/predict: asked for top_k={top_k}, got {single['labels']}")

        files = [("files", (path.name, path.read_bytes(), "image/png")) for path in images]
        files.append(("files", ("not-an-image.txt", NOT_AN_IMAGE, "text/plain")))
        batch = _json(client.post("/v1/predict/batch", params={"top_k": top_k}, files=files))
        results = batch["results"]
        if len(results) != len(files) or batch["succeeded"] != len(images) or batch["failed"] != 1:
            raise SmokeFailure(f"/v1/predict/batch: expected {len(images)} predictions and 1 error, got {batch}")
        for path, item in zip(images, results):
            if item["status"] != 200 or item["filename"] != path.name:
                raise SmokeFailure(f"/v1/predict/batch {path.name}: {item}")
            check_prediction(item["prediction"], labels, members, f"/v1/predict/batch {path.name}")
            top = item["prediction"]["labels"][0]
            report.append(f"{path.name}: {top['label']} (votes {top['votes']}/{members}, score {top['score']:.3f})")
        bad = results[-1]
        if bad["status"] != 415 or not bad.get("error"):
            raise SmokeFailure(f"/v1/predict/batch: the non-image item should get its own 415, got {bad}")
        if [label["index"] for label in results[0]["prediction"]["labels"]] != [label["index"] for label in single["labels"]]:
            raise SmokeFailure(f"{first.name}: /v1/predict and /v1/predict/batch disagree: {single['labels']} vs {results[0]}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images", help="write Fashion-MNIST test images as PNG")
    images.add_argument("out", type=Path)
    images.add_argument("--count", type=int, default=4)
    images.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    check = commands.add_parser("check", help="check a running service")
    check.add_argument("base_url")
    check.add_argument("repository", type=Path)
    check.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "images":
        for path in write_images(args.out, args.count, args.fmnist_dir):
            print(path)
        return 0
    try:
        for line in check_service(args.base_url, args.repository, args.images):
            print(line)
    except (SmokeFailure, httpx.HTTPError) as exc:
        print(f"smoke check failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
