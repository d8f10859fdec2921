"""Training data: the Fashion-MNIST-LT benchmark and user data sets (ImageFolder trees, CSV manifests).

Torch-free (NumPy and Pillow), so ``productrec data`` starts fast; the training
code wraps an ``ImageSet`` in its own torch ``Dataset``. Image files are decoded
with ``app.contract.preprocess.decode_image``, the decoder the service uses.

The benchmark, deterministic by ``data_seed``:

1. ``val_per_class`` images per class are held out of the 60,000 official
   training images first: a clean, balanced validation split.
2. The long-tailed training split is drawn from the rest with
   n_k = floor(n_max * rho^(-k/(K-1))) in the natural class order (class 0,
   T-shirt/top, is the head; class 9, Ankle boot, the tail). The images kept
   for a class are a prefix of one seeded permutation, so a smaller rho or
   n_max keeps a subset of the same images and never moves the validation split.
3. Label noise is injected into the training split only (``inject_noise``);
   the clean labels are kept in ``ImageSet.clean_labels``.
4. The test split is the official 10,000 test images, or the first
   ``test_per_class`` of each class in file order (the same for every seed).

User data sets (an ImageFolder tree: one sub-folder per class, class names
sorted; or a ``path,label`` CSV whose labels are class names, sorted) get
in_chans 3 and no injected noise: the noise, long-tail and ``test_per_class``
options apply to the benchmark only. Without ``val_dataset`` the validation
split takes at most ``val_per_class`` and at most half of each class (seeded).
Bad files (missing, empty, not an image by a cheap header check, over the pixel
limit) are logged, recorded in ``Splits.skipped`` and left out; so are
validation/test images of classes the training set lacks. A class with no
usable training image, or no usable image at all, is a ValueError.
"""

from __future__ import annotations

import abc
import argparse
import csv
import gzip
import hashlib
import json
import logging
import math
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.contract.preprocess import ImageDecodeError, ImageTooLargeError, decode_image
from training.config import FMNIST_BENCHMARK, DataConfig, config_from_args, user_errors

logger = logging.getLogger(__name__)

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
# Per-pixel mean and standard deviation (0..1 scale) of the 60,000 training images:
# 0.28604 and 0.35302 measured; tests/test_data.py checks them against the files.
FASHION_MNIST_MEAN: float = 0.2860
FASHION_MNIST_STD: float = 0.3530

# Class-dependent noise: every class flips to one fixed look-alike, so the realised
# rate is r for any class mix. The three pairs the issue names swap both ways;
# Trouser -> Dress (the long garments), Dress -> T-shirt/top (one-piece tops),
# Sandal -> Sneaker (footwear) and Bag -> Pullover (bulky, square silhouettes).
SIMILAR_CLASS: dict[int, int] = {
    0: 6,  # T-shirt/top -> Shirt
    6: 0,  # Shirt -> T-shirt/top
    2: 4,  # Pullover -> Coat
    4: 2,  # Coat -> Pullover
    7: 9,  # Sneaker -> Ankle boot
    9: 7,  # Ankle boot -> Sneaker
    1: 3,  # Trouser -> Dress
    3: 0,  # Dress -> T-shirt/top
    5: 7,  # Sandal -> Sneaker
    8: 2,  # Bag -> Pullover
}
NOISE_TYPES: tuple[str, ...] = ("symmetric", "asymmetric")

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --fmnist-dir DIR"

# What torchvision's ImageFolder accepts, plus .gif.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# Training images larger than this are reported and skipped (decoding them would cost GBs).
DEFAULT_MAX_PIXELS = 40_000_000
SCAN_THREADS = 8


class BadImageError(ValueError):
    """An image file that cannot be read or decoded; the message names the path."""

    def __init__(self, path: str | Path, reason: str = "cannot read the image") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# --------------------------------------------------------------------------- Fashion-MNIST files


def load_fashion_mnist(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images uint8 [60000, 28, 28], train labels int64, test images, test labels.

    Reads the idx files, gzipped or not. The arrays are read-only and cached per
    directory for the life of the process.
    """
    return _load_fashion_mnist_cached(str(Path(directory).expanduser().resolve()))


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


# --------------------------------------------------------------------------- long tail and noise


def long_tail_counts(n_max: int, n_classes: int, imbalance_ratio: float) -> np.ndarray:
    """Images per class of the exponential profile n_k = floor(n_max * rho^(-k/(K-1))), at least 1."""
    if n_max < 1 or n_classes < 1:
        raise ValueError(f"n_max and n_classes must be at least 1, got {n_max} and {n_classes}")
    if not imbalance_ratio >= 1:
        raise ValueError(f"the imbalance ratio must be >= 1, got {imbalance_ratio}")
    if n_classes == 1:
        return np.array([n_max], dtype=np.int64)
    exponents = np.arange(n_classes) / (n_classes - 1)
    counts = np.floor(n_max * float(imbalance_ratio) ** -exponents)
    return np.maximum(counts, 1).astype(np.int64)


def inject_noise(
    labels: np.ndarray,
    n_classes: int,
    rate: float,
    noise_type: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noisy copy of ``labels``: each label flips with probability ``rate``.

    'symmetric' flips to a uniformly random other class; 'asymmetric' flips to
    ``SIMILAR_CLASS[label]`` (defined for the 10 Fashion-MNIST classes). The same
    seed flips the same samples for both types.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the noise rate must be within [0, 1], got {rate}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {noise_type!r}; use one of {', '.join(NOISE_TYPES)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    flip = rng.random(labels.shape[0]) < rate
    noisy = labels.copy()
    if noise_type == "symmetric":
        if n_classes < 2 and flip.any():
            raise ValueError("symmetric noise needs at least 2 classes")
        offsets = rng.integers(1, n_classes, size=int(flip.sum())) if n_classes > 1 else 0
        noisy[flip] = (labels[flip] + offsets) % n_classes
    else:
        if n_classes != len(SIMILAR_CLASS):
            raise ValueError(f"asymmetric noise maps the {len(SIMILAR_CLASS)} Fashion-MNIST classes, not {n_classes}")
        similar = np.array([SIMILAR_CLASS[k] for k in range(n_classes)], dtype=np.int64)
        noisy[flip] = similar[labels[flip]]
    return noisy


# --------------------------------------------------------------------------- image sets


class ImageSet(abc.ABC):
    """A labelled image source: a map-style data set with no torch dependency.

    ``labels`` are the labels to train on (noisy where noise was injected);
    ``clean_labels`` the true labels where known (the benchmark), else None.
    """

    labels: np.ndarray
    clean_labels: np.ndarray | None
    in_chans: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), int(self.labels[index])

    @abc.abstractmethod
    def load(self, index: int) -> Image.Image:
        """The decoded image ("L" for 1 channel, "RGB" for 3); ``BadImageError`` if it cannot be read."""

    @abc.abstractmethod
    def describe(self, index: int) -> str:
        """Where the image comes from: its file path, or e.g. "fashion-mnist train #123"."""

    @abc.abstractmethod
    def identity(self) -> bytes:
        """What selects the images (source indices or relative paths), for the data fingerprint."""


class ArrayImageSet(ImageSet):
    """Images held in memory as uint8 [N, H, W] (the Fashion-MNIST benchmark)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        clean_labels: np.ndarray | None,
        source_indices: np.ndarray,
        source: str,
    ) -> None:
        self.images = images
        self.labels = labels
        self.clean_labels = clean_labels
        self.source_indices = source_indices
        self.source = source
        self.in_chans = 1

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def describe(self, index: int) -> str:
        return f"{self.source} #{int(self.source_indices[index])}"

    def identity(self) -> bytes:
        return self.source.encode() + np.ascontiguousarray(self.source_indices, dtype="<i8").tobytes()


class FileImageSet(ImageSet):
    """Image files, decoded on demand by ``app.contract.preprocess.decode_image``."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        root: Path,
        in_chans: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.clean_labels = None
        self.root = root
        self.in_chans = in_chans
        self.max_pixels = max_pixels

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return decode_image(path.read_bytes(), self.in_chans, self.max_pixels)
        except (OSError, ImageDecodeError, ImageTooLargeError) as exc:
            raise BadImageError(path, str(exc)) from exc

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def identity(self) -> bytes:
        # Relative to the data set's root, so the same data elsewhere has the same fingerprint.
        return "\n".join(os.path.relpath(path, self.root) for path in self.paths).encode()


@dataclass
class Splits:
    """The train, validation and (optional) test splits of one data configuration."""

    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    label_names: list[str]
    class_counts: np.ndarray  # n(k) from the training split's (noisy) labels
    fingerprint: str  # sha256 of the chosen images and their labels
    skipped: list[tuple[str, str]]  # (path, reason) of bad files, reported and left out
    in_chans: int
    noise_rate_realised: float | None = None  # fraction of training labels that differ from the clean ones


def build_splits(config: DataConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Splits:
    """The splits ``config`` describes: the ``fmnist-lt`` benchmark, an ImageFolder tree or a CSV manifest.

    Raises FileNotFoundError for missing data and ValueError for unusable data or options.
    """
    if config.val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {config.val_per_class}")
    if config.dataset == FMNIST_BENCHMARK:
        splits = _build_benchmark(config)
    else:
        splits = _build_user_splits(config, max_pixels)
    empty = [splits.label_names[k] for k in np.flatnonzero(splits.class_counts == 0)]
    if empty:
        raise ValueError(f"no training labels left for class(es) {', '.join(empty)} (lower the noise rate?)")
    if len(splits.val) == 0:
        raise ValueError("the validation split is empty: raise val_per_class or pass a validation data set")
    return splits


def _build_benchmark(config: DataConfig) -> Splits:
    if config.val_dataset or config.test_dataset:
        raise ValueError(f"--val-dataset and --test-dataset are for user data sets, not {FMNIST_BENCHMARK}")
    if config.val_per_class < 1:
        raise ValueError(f"{FMNIST_BENCHMARK} needs val_per_class >= 1, got {config.val_per_class}")
    train_images, train_labels, test_images, test_labels = load_fashion_mnist(config.fmnist_dir)
    n_classes = len(FASHION_MNIST_LABELS)
    split_rng, noise_rng = (np.random.default_rng(seed) for seed in np.random.SeedSequence(config.data_seed).spawn(2))

    rank = _rank_within_class(train_labels, split_rng.random(train_labels.shape[0]))
    available = np.bincount(train_labels, minlength=n_classes) - config.val_per_class
    if available.min() < 1:
        raise ValueError(
            f"val_per_class {config.val_per_class} leaves no training images for some class "
            f"(each has at most {available.min() + config.val_per_class})"
        )
    n_max = config.max_per_class if config.max_per_class is not None else int(available.max())
    if n_max < 1:
        raise ValueError(f"max_per_class must be >= 1, got {n_max}")
    counts = long_tail_counts(n_max, n_classes, config.imbalance_ratio)
    if (counts > available).any():
        raise ValueError(
            f"max_per_class {n_max} exceeds the {available.min()} images per class left after holding out "
            f"{config.val_per_class} per class for validation"
        )
    val_indices = np.flatnonzero(rank < config.val_per_class)
    pool_rank = rank - config.val_per_class  # rank among the images left after the hold-out
    train_indices = np.flatnonzero((pool_rank >= 0) & (pool_rank < counts[train_labels]))
    clean = train_labels[train_indices]
    noisy = inject_noise(clean, n_classes, config.noise_rate, config.noise_type, noise_rng)

    if config.test_per_class is not None:
        smallest = int(np.bincount(test_labels, minlength=n_classes).min())
        if not 1 <= config.test_per_class <= smallest:
            raise ValueError(f"test_per_class must be between 1 and {smallest}, got {config.test_per_class}")
        file_order = _rank_within_class(test_labels, np.zeros(test_labels.shape[0]))
        test_indices = np.flatnonzero(file_order < config.test_per_class)
    else:
        test_indices = np.arange(test_labels.shape[0])

    train = ArrayImageSet(train_images[train_indices], noisy, clean, train_indices, "fashion-mnist train")
    val = _clean_array_set(train_images, train_labels, val_indices, "fashion-mnist train")
    test = _clean_array_set(test_images, test_labels, test_indices, "fashion-mnist test")
    return _make_splits(train, val, test, list(FASHION_MNIST_LABELS), skipped=[])


def _clean_array_set(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, source: str) -> ArrayImageSet:
    chosen = labels[indices]
    return ArrayImageSet(images[indices], chosen, chosen, indices, source)


def _rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each sample's rank among the samples of its class, ordered by ``keys`` (ties by position)."""
    order = np.lexsort((np.arange(labels.shape[0]), keys, labels))
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(labels.shape[0], dtype=np.int64)
    rank[order] = np.arange(labels.shape[0]) - first_of_class
    return rank


def _make_splits(
    train: ImageSet,
    val: ImageSet,
    test: ImageSet | None,
    label_names: list[str],
    skipped: list[tuple[str, str]],
) -> Splits:
    noise_rate = None
    if train.clean_labels is not None and len(train):
        noise_rate = float(np.mean(train.labels != train.clean_labels))
    return Splits(
        train=train,
        val=val,
        test=test,
        label_names=label_names,
        class_counts=np.bincount(train.labels, minlength=len(label_names)).astype(np.int64),
        fingerprint=_fingerprint(label_names, train.in_chans, {"train": train, "val": val, "test": test}),
        skipped=skipped,
        in_chans=train.in_chans,
        noise_rate_realised=noise_rate,
    )


def _fingerprint(label_names: list[str], in_chans: int, image_sets: dict[str, ImageSet | None]) -> str:
    """sha256 of what defines the data: the chosen images and their (noisy and clean) labels.

    The options are all reflected in these, and the data's location is not part
    of it, so the same data found elsewhere (another --fmnist-dir) keeps its fingerprint.
    """
    digest = hashlib.sha256()

    def add(chunk: bytes) -> None:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)

    add(json.dumps({"label_names": label_names, "in_chans": in_chans}).encode())
    for name, image_set in image_sets.items():
        add(name.encode())
        if image_set is None:
            add(b"")
            continue
        add(image_set.identity())
        for labels in (image_set.labels, image_set.clean_labels):
            add(b"" if labels is None else np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- user data sets


@dataclass
class _UserData:
    """The usable files of an ImageFolder tree or CSV manifest, with their class names."""

    root: Path
    paths: list[Path]
    names: list[str]  # class name of each path
    class_names: list[str]  # every class the source declares, sorted
    skipped: list[tuple[str, str]]


def _build_user_splits(config: DataConfig, max_pixels: int) -> Splits:
    if config.noise_rate > 0:
        logger.info("user data set: trained with its own labels (the noise options apply to %s only)", FMNIST_BENCHMARK)
    source = _read_user_data(config.dataset, max_pixels)
    label_names = source.class_names
    labels = _class_indices(source.names, label_names)
    counts = np.bincount(labels, minlength=len(label_names))
    if (counts == 0).any():
        empty = [label_names[k] for k in np.flatnonzero(counts == 0)]
        raise ValueError(f"{config.dataset}: no usable images for class(es) {', '.join(empty)}")
    skipped = list(source.skipped)

    def image_set(data: _UserData, chosen: np.ndarray, chosen_labels: np.ndarray) -> FileImageSet:
        return FileImageSet([data.paths[i] for i in chosen], chosen_labels, data.root, max_pixels=max_pixels)

    if config.val_dataset:
        train = image_set(source, np.arange(len(labels)), labels)
        val = _labelled_set(config.val_dataset, label_names, max_pixels, skipped)
    else:
        # Stratified: at most val_per_class and at most half of each class, so every class keeps >= 1 for training.
        rng = np.random.default_rng(config.data_seed)
        rank = _rank_within_class(labels, rng.random(labels.shape[0]))
        is_val = rank < np.minimum(config.val_per_class, counts // 2)[labels]
        train = image_set(source, np.flatnonzero(~is_val), labels[~is_val])
        val = image_set(source, np.flatnonzero(is_val), labels[is_val])
    test = _labelled_set(config.test_dataset, label_names, max_pixels, skipped) if config.test_dataset else None
    return _make_splits(train, val, test, label_names, skipped)


def _labelled_set(
    location: str, label_names: list[str], max_pixels: int, skipped: list[tuple[str, str]]
) -> FileImageSet:
    """A validation or test set labelled with the training classes; files of other classes are reported and skipped."""
    data = _read_user_data(location, max_pixels)
    skipped.extend(data.skipped)
    known = set(label_names)
    keep = []
    for i, (path, name) in enumerate(zip(data.paths, data.names)):
        if name in known:
            keep.append(i)
        else:
            _report(skipped, path, f"class {name!r} is not one of the training classes")
    if not keep:
        raise ValueError(f"{location}: no usable images of the training classes")
    labels = _class_indices([data.names[i] for i in keep], label_names)
    return FileImageSet([data.paths[i] for i in keep], labels, data.root, max_pixels=max_pixels)


def _class_indices(names: Sequence[str], label_names: list[str]) -> np.ndarray:
    index = {name: k for k, name in enumerate(label_names)}
    return np.array([index[name] for name in names], dtype=np.int64)


def _read_user_data(location: str, max_pixels: int) -> _UserData:
    path = Path(location).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data set {location} not found (expected '{FMNIST_BENCHMARK}', an ImageFolder directory or a CSV manifest)"
        )
    if path.is_dir():
        root = path.resolve()
        entries, skipped, class_names = _list_image_folder(root)
    elif path.suffix.lower() == ".csv":
        root = path.resolve().parent
        entries, skipped = _list_csv(path.resolve())
        class_names = sorted({name for _, name in entries})
    else:
        raise ValueError(f"data set {location}: expected an ImageFolder directory or a .csv manifest")
    problems = _scan(paths=[p for p, _ in entries], max_pixels=max_pixels)
    usable = []
    for (file, name), problem in zip(entries, problems):
        if problem is None:
            usable.append((file, name))
        else:
            _report(skipped, file, problem)
    if not usable:
        raise ValueError(f"data set {location}: no usable images ({len(skipped)} file(s) skipped)")
    return _UserData(root, [p for p, _ in usable], [n for _, n in usable], class_names, skipped)


def _list_image_folder(root: Path) -> tuple[list[tuple[Path, str]], list[tuple[str, str]], list[str]]:
    """Files of an ImageFolder tree: one sub-folder per class (sorted by name), searched recursively.

    Hidden files and folders (".*") are ignored; other files that are not in a
    class folder or lack an image extension are reported as skipped.
    """
    class_dirs = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root}: no class folders (an ImageFolder has one sub-folder of images per class)")
    skipped: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() and not entry.name.startswith("."):
            _report(skipped, entry, "not inside a class folder")
    entries = []
    for class_dir in class_dirs:
        for folder, subfolders, files in os.walk(class_dir, followlinks=True):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                file = Path(folder) / name
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    entries.append((file, class_dir.name))
                else:
                    _report(skipped, file, f"not an image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return entries, skipped, [d.name for d in class_dirs]


def _list_csv(manifest: Path) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Rows of a ``path,label`` CSV (labels are class names); relative paths are resolved against the CSV's folder."""
    entries: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [name.strip() for name in reader.fieldnames or []]
            if not {"path", "label"} <= set(columns):
                found = ",".join(columns) or "nothing"
                raise ValueError(f"{manifest}: a CSV manifest needs the header 'path,label'; found {found}")
            reader.fieldnames = columns
            for line, row in enumerate(reader, start=2):
                path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if path and label:
                    entries.append((manifest.parent / path, label))
                else:
                    _report(skipped, f"{manifest}:{line}", "row without a path or a label")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{manifest}: not a UTF-8 text CSV file ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{manifest}: malformed CSV: {exc}") from exc
    return entries, skipped


def _report(skipped: list[tuple[str, str]], path: str | Path, reason: str) -> None:
    logger.warning("skipping %s: %s", path, reason)
    skipped.append((str(path), reason))


def _scan(paths: Sequence[Path], max_pixels: int) -> list[str | None]:
    """Why each file is unusable (None when fine), checked cheaply in a thread pool."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        checks = pool.map(lambda path: check_image_file(path, max_pixels), paths)
        return list(tqdm(checks, total=len(paths), desc="checking images", unit="file", disable=len(paths) < 1000))


def check_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why ``path`` is not a usable image, or None: it exists, is not empty, and Pillow reads its header.

    Cheap (no pixels are decoded), so a truncated file can still fail later in ``ImageSet.load``.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot access the file: {exc.strerror or exc}"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if status.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except UnidentifiedImageError:
        return "not an image (no format Pillow recognises)"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return f"not a readable image: {exc}"
    if width * height > max_pixels:
        return f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
    return None


# --------------------------------------------------------------------------- report


def format_histogram(splits: Splits, max_rows: int = 60, bar_width: int = 40) -> str:
    """The training split's class histogram as a text table with bars, plus the realised noise rate.

    With more than ``max_rows`` classes only the largest and smallest classes are listed.
    """
    n_classes = len(splits.label_names)
    counts = splits.class_counts
    clean = _bincount(splits.train.clean_labels, n_classes)
    val = _bincount(splits.val.labels, n_classes)
    test = _bincount(splits.test.labels, n_classes) if splits.test is not None else None
    lines = [
        f"Training split: {len(splits.train):,} images in {n_classes:,} classes; "
        f"imbalance of n(k) (its labels): {_imbalance(counts)}"
        + (f"; of the clean labels: {_imbalance(clean)}" if clean is not None else "")
    ]
    name_width = min(max(5, *(len(name) for name in splits.label_names)), 32)
    header = f"{'k':>6}  {'class':<{name_width}}  {'n(k)':>9}"
    header += f"  {'clean':>9}" if clean is not None else ""
    header += f"  {'val':>7}" + (f"  {'test':>7}" if test is not None else "")
    lines.append(header)

    def row(k: int) -> str:
        bar = "#" * max(int(round(bar_width * counts[k] / max(counts.max(), 1))), 1 if counts[k] else 0)
        text = f"{k:>6}  {splits.label_names[k][:name_width]:<{name_width}}  {counts[k]:>9,}"
        text += f"  {clean[k]:>9,}" if clean is not None else ""
        text += f"  {val[k]:>7,}" + (f"  {test[k]:>7,}" if test is not None else "")
        return f"{text}  {bar}"

    if n_classes <= max_rows:
        lines.extend(row(k) for k in range(n_classes))
    else:
        order = np.argsort(-counts, kind="stable")
        half = max_rows // 2
        lines.extend(row(int(k)) for k in order[:half])
        hidden = order[half:-half]
        low, high = counts[hidden].min(), counts[hidden].max()
        lines.append(f"{'':>6}  ... {len(hidden):,} classes with n(k) from {high:,} down to {low:,} ...")
        lines.extend(row(int(k)) for k in order[-half:])
    total = f"{'total':>6}  {'':<{name_width}}  {counts.sum():>9,}"
    total += f"  {clean.sum():>9,}" if clean is not None else ""
    total += f"  {val.sum():>7,}" + (f"  {test.sum():>7,}" if test is not None else "")
    lines.append(total)
    if splits.noise_rate_realised is None:
        lines.append("Label noise: unknown (no clean labels for this data set)")
    else:
        flipped = int(np.sum(splits.train.labels != splits.train.clean_labels))
        lines.append(
            f"Label noise realised: {splits.noise_rate_realised:.2%} of training labels "
            f"({flipped:,} of {len(splits.train):,}) differ from the clean labels"
        )
    return "\n".join(lines)


def _imbalance(counts: np.ndarray) -> str:
    return f"{counts.max():,}/{counts.min():,} = {counts.max() / max(int(counts.min()), 1):.1f}"


def _bincount(labels: np.ndarray | None, n_classes: int) -> np.ndarray | None:
    return None if labels is None else np.bincount(labels, minlength=n_classes)


def plot_histogram(splits: Splits, path: Path) -> None:
    """A PNG bar chart (log scale) of n(k); with clean labels, the clean profile beside it."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import; Figure renders with Agg

    n_classes = len(splits.label_names)
    positions = np.arange(n_classes)
    figure = Figure(figsize=(max(6.0, min(0.6 * n_classes, 16.0)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    clean = _bincount(splits.train.clean_labels, n_classes)
    if clean is None:
        axes.bar(positions, splits.class_counts, width=0.8, label="n(k): training labels")
    else:
        axes.bar(positions - 0.2, clean, width=0.4, label="clean labels (the long-tail profile)")
        axes.bar(positions + 0.2, splits.class_counts, width=0.4, label="n(k): training labels, with noise")
    axes.set_yscale("log")
    axes.set_ylabel("training images")
    axes.set_xlabel("class")
    if n_classes <= 40:
        axes.set_xticks(positions, splits.label_names, rotation=45, ha="right")
    noise = "unknown" if splits.noise_rate_realised is None else f"{splits.noise_rate_realised:.1%}"
    axes.set_title(f"Training split: {len(splits.train):,} images, {n_classes} classes, label noise {noise}")
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(args: argparse.Namespace) -> int:
    """``productrec data``: build the splits, print the class histogram, noise rate, split sizes and skipped files."""
    with user_errors():
        splits = build_splits(config_from_args(args).data)
    print(format_histogram(splits))
    sizes = f"train {len(splits.train):,}, val {len(splits.val):,}"
    sizes += f", test {len(splits.test):,} images" if splits.test is not None else " images, no test split"
    print(f"Splits: {sizes}; {splits.in_chans} input channel(s)")
    print(f"Data fingerprint: {splits.fingerprint}")
    _print_skipped(splits.skipped)
    plot = getattr(args, "plot", None)
    if plot:
        plot_histogram(splits, Path(plot))
        print(f"Histogram plot: {plot}")
    return 0


def _print_skipped(skipped: Iterable[tuple[str, str]], limit: int = 50) -> None:
    skipped = list(skipped)
    print(f"Skipped files: {len(skipped)}")
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (each was logged as a warning)")
