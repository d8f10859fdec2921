"""Accuracy effect of a preprocessing change on photos: top-1 of an ensemble on Fashion-MNIST test images
rendered as product photos (``bench.serving.photos.fashion_photo``: 400-1000 px RGB JPEGs), through the
``app`` of this checkout or of another one (``--app-root``, e.g. the main branch's worktree).

    .venv/bin/python -m bench.decode_accuracy REPOSITORY --out /tmp/after.npz
    .venv/bin/python -m bench.decode_accuracy REPOSITORY --app-root /work/main --out /tmp/before.npz
    .venv/bin/python -m bench.decode_accuracy --compare /tmp/before.npz /tmp/after.npz

Each run writes the ensemble's and every member's top-1 per image, for negated photos (dark product on
white, as catalogue photos are) and photos as stored (light on black, as the models were trained); the
comparison prints top-1 error before and after and how often the two agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RENDERINGS = ("negated", "as_stored")


def _photos(fmnist_dir: Path, count: int, seed: int) -> tuple[dict[str, list[bytes]], np.ndarray]:
    from bench.serving.photos import fashion_photo, jpeg
    from training.fashion_mnist import load_fashion_mnist

    from PIL import Image

    _, _, images, labels = load_fashion_mnist(fmnist_dir)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), count, replace=False)
    sizes = rng.integers(400, 1001, count)
    negated = [fashion_photo(images[i], int(size)) for i, size in zip(chosen, sizes)]
    as_stored = [
        jpeg(Image.fromarray(images[i]).convert("RGB").resize((int(size),) * 2, Image.Resampling.BICUBIC))
        for i, size in zip(chosen, sizes)
    ]
    return {"negated": negated, "as_stored": as_stored}, labels[chosen]


def predict(repository: Path, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble top-1 ``[N]`` and member top-1 ``[M, N]`` with TTA, crops from ``decode_crops`` as served."""
    from app.contract.preprocess import decode_crops
    from app.contract.ranking import rank
    from app.engine.ensemble import Ensemble

    ensemble = Ensemble.load(repository, "cpu")
    plan = ensemble.crop_plan(tta=True)
    ensemble_top1, member_top1 = [], []
    for start in range(0, len(photos), 64):
        crops = [decode_crops(data, plan, 10**9) for data in photos[start : start + 64]]
        probs = ensemble.member_probabilities(crops, tta=True)
        ensemble_top1 += [int(ranking.indices[0]) for ranking in rank(probs, 1, ensemble.strategy)]
        member_top1.append(probs.argmax(axis=2))
    return np.asarray(ensemble_top1), np.concatenate(member_top1, axis=1)


def compare(before_path: Path, after_path: Path) -> None:
    before, after = np.load(before_path), np.load(after_path)
    labels = before["labels"]
    print(f"{len(labels)} photos; top-1 error before -> after, and agreement of the two top-1s")
    for rendering in RENDERINGS:
        for who, key in (("ensemble", "ensemble"), ("members", "members")):
            old, new = before[f"{rendering}_{key}"], after[f"{rendering}_{key}"]
            print(
                f"  {rendering:9} {who:8}: error {np.mean(old != labels):.4f} -> {np.mean(new != labels):.4f}, "
                f"agreement {np.mean(old == new):.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, nargs="?")
    parser.add_argument("--app-root", type=Path, help="import app from this checkout (the 'before')")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    if args.repository is None or args.out is None:
        parser.error("give REPOSITORY and --out (or --compare BEFORE AFTER)")
    photos, labels = _photos(args.fmnist_dir, args.count, args.seed)
    if args.app_root:
        sys.path.insert(0, str(args.app_root.resolve()))
        assert "app" not in sys.modules, "app must first be imported from --app-root"
    results: dict[str, np.ndarray] = {"labels": labels}
    for rendering in RENDERINGS:
        results[f"{rendering}_ensemble"], results[f"{rendering}_members"] = predict(args.repository, photos[rendering])
    import app

    print(f"app from {Path(app.__file__).parent}")
    np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
