"""Write samples/: one photo a user would send per class, made from the official Fashion-MNIST test images.

The first test image of each class (file order; chosen without looking at any model's answer), as shot
(the product on white), as a 600x600 RGB JPEG: ``<test index>_<class>.jpg``.

    python scripts/make_samples.py [--fmnist-dir DIR] [--out samples]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist_as_shot  # noqa: E402
from training.photo_render import as_photo, encode  # noqa: E402

SIZE, QUALITY = 600, 90


def sample_name(index: int, label: int) -> str:
    slug = FASHION_MNIST_LABELS[label].lower().replace("/", "_").replace("-", "_").replace(" ", "_")
    return f"{index}_{slug}.jpg"


def write_samples(fmnist_dir: Path, out: Path) -> list[Path]:
    """The first test image of each class as a photo in ``out``; older samples there are removed."""
    _, _, images, labels = load_fashion_mnist_as_shot(fmnist_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.jpg")]:
        old.unlink()
    paths = []
    for label in range(len(FASHION_MNIST_LABELS)):
        index = int(np.flatnonzero(labels == label)[0])
        path = out / sample_name(index, label)
        path.write_bytes(encode(as_photo(images[index], SIZE), "JPEG", QUALITY))
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "samples")
    args = parser.parse_args()
    for path in write_samples(args.fmnist_dir, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
