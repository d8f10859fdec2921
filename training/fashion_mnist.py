"""The Fashion-MNIST idx files: reader, class names, the rendering as shot and its pixel statistics.

The files store Zalando's photos with negated intensities (a light product on black);
``as_shot`` negates them back to the product on white, as catalogue photos are shot
and as users send them. The benchmark trains, validates and tests on that rendering.
"""

from __future__ import annotations

import gzip
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel mean and standard deviation (0..1 scale) of the 60,000 training images as stored,
# measured; tests/test_data.py checks them against the files.
STORED_MEAN: float = 0.28604
STORED_STD: float = 0.35302
# The same statistics as shot: negation maps x to 1 - x, so the mean flips and the std is unchanged.
FASHION_MNIST_MEAN: float = round(1.0 - STORED_MEAN, 5)
FASHION_MNIST_STD: float = STORED_STD

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --fmnist-dir DIR"


def load_fashion_mnist(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images uint8 [60000, 28, 28], train labels int64, test images, test labels.

    Reads the idx files, gzipped or not. The arrays are read-only and cached per
    directory for the life of the process.
    """
    return _load_fashion_mnist_cached(str(Path(directory).expanduser().resolve()))


def as_shot(images: np.ndarray) -> np.ndarray:
    """The stored images negated back to the product on white (255 - pixel), read-only."""
    negated = np.subtract(255, images, dtype=np.uint8)
    negated.flags.writeable = False
    return negated


def load_fashion_mnist_as_shot(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``load_fashion_mnist`` with the images rendered ``as_shot``: the product on white."""
    return _load_as_shot_cached(str(Path(directory).expanduser().resolve()))


@lru_cache(maxsize=2)
def _load_as_shot_cached(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_images, train_labels, test_images, test_labels = _load_fashion_mnist_cached(directory)
    return as_shot(train_images), train_labels, as_shot(test_images), test_labels


@lru_cache(maxsize=2)
def _load_fashion_mnist_cached(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = Path(directory)
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        path = _fashion_mnist_file(root, name)
        arrays[key] = _read_idx(path, dims=3 if key.endswith("images") else 1)
        if key.endswith("labels"):
            labels = arrays[key].astype(np.int64)
            if labels.size and labels.max() >= len(FASHION_MNIST_LABELS):
                raise ValueError(f"{path}: labels must be below {len(FASHION_MNIST_LABELS)}, found {labels.max()}")
            labels.flags.writeable = False
            arrays[key] = labels
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{root}: {images.shape[0]} {split} images but {labels.shape[0]} {split} labels")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def _fashion_mnist_file(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {root / name}[.gz] not found; {FASHION_MNIST_INSTALL_HINT}")


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``dims`` dimensions (the MNIST format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the idx file: {exc}") from exc
    header = 4 + 4 * dims
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, dims)):
        raise ValueError(f"{path}: not an idx file of unsigned bytes with {dims} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != math.prod(shape):
        raise ValueError(f"{path}: the header announces shape {shape} but {len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
