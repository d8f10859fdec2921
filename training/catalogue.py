"""What a catalogue owner needs to know before training: class sizes, duplicate files and image sizes.

Vectorised over the images (NumPy), so a catalogue of 50,000 classes takes seconds;
each distinct file is read once to hash its content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.user_data import Catalogue, map_in_threads

SMALL_CLASS_THRESHOLDS: tuple[int, ...] = (5, 20, 100)


@dataclass
class SizeStats:
    """Minimum, median and maximum of one image dimension, in pixels."""

    min: int
    median: float
    max: int


@dataclass
class CatalogueReport:
    """Figures of every usable image of a user data set, before the validation split."""

    location: str
    images: int
    classes: int
    largest_class: int
    smallest_class: int
    classes_below: dict[int, int]  # threshold t -> how many classes have fewer than t images
    duplicates_within_class: int  # images whose content an earlier image of the same class has
    classes_with_duplicates: int
    cross_class_contents: int  # distinct contents found under more than one class: label noise
    cross_class_images: int
    cross_class_classes: int
    cross_class_examples: list[tuple[str, list[str]]]  # a path and the classes its content appears under
    width: SizeStats
    height: SizeStats

    @property
    def imbalance_ratio(self) -> float:
        return self.largest_class / self.smallest_class


def catalogue_report(catalogue: Catalogue, n_examples: int = 5) -> CatalogueReport:
    """Class-size, duplicate and image-size figures of ``catalogue``."""
    n_classes = len(catalogue.label_names)
    labels = catalogue.labels
    counts = np.bincount(labels, minlength=n_classes)
    contents = content_ids(catalogue.paths)

    # One entry per (content, class) pair: repeats within a pair are duplicates within a class;
    # a content with pairs in several classes is the same image under different labels.
    pairs, pair_sizes = np.unique(contents * n_classes + labels, return_counts=True)
    pair_content, pair_class = pairs // n_classes, pairs % n_classes
    classes_per_content = np.bincount(pair_content, minlength=int(contents.max()) + 1)
    shared = classes_per_content > 1
    shared_pairs = shared[pair_content]
    examples = []
    for content in np.flatnonzero(shared)[:n_examples]:
        first = int(np.argmax(contents == content))
        classes = pair_class[pair_content == content]
        examples.append((str(catalogue.paths[first]), [catalogue.label_names[k] for k in classes]))
    return CatalogueReport(
        location=catalogue.location,
        images=int(labels.shape[0]),
        classes=n_classes,
        largest_class=int(counts.max()),
        smallest_class=int(counts.min()),
        classes_below={t: int(np.count_nonzero(counts < t)) for t in SMALL_CLASS_THRESHOLDS},
        duplicates_within_class=int(np.sum(pair_sizes - 1)),
        classes_with_duplicates=int(np.unique(pair_class[pair_sizes > 1]).size),
        cross_class_contents=int(np.count_nonzero(shared)),
        cross_class_images=int(np.count_nonzero(shared[contents])),
        cross_class_classes=int(np.unique(pair_class[shared_pairs]).size),
        cross_class_examples=examples,
        width=_size_stats(catalogue.sizes[:, 0]),
        height=_size_stats(catalogue.sizes[:, 1]),
    )


def content_ids(paths: list[Path]) -> np.ndarray:
    """One id per path, equal for equal file contents (SHA-256); each distinct path is read once."""
    distinct = list(dict.fromkeys(paths))
    digests = map_in_threads(_file_digest, distinct, "hashing images")
    ids: dict[bytes, int] = {}
    path_ids = {path: ids.setdefault(digest, len(ids)) for path, digest in zip(distinct, digests)}
    return np.fromiter((path_ids[path] for path in paths), dtype=np.int64, count=len(paths))


def _file_digest(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").digest()
    except OSError:
        # Unreadable since the scan: unique, so it never counts as a duplicate.
        return b"unreadable:" + str(path).encode()


def _size_stats(values: np.ndarray) -> SizeStats:
    return SizeStats(int(values.min()), float(np.median(values)), int(values.max()))
