"""User data sets: ImageFolder trees and ``path,label`` CSV manifests, listed, checked and split.

An ImageFolder tree has one sub-folder per class (class names sorted); a CSV
manifest's labels are class names (sorted). User data gets in_chans 3 and no
injected noise: the noise, long-tail and ``test_per_class`` options apply to
the benchmark only. Without ``val_dataset`` the validation split takes at most
``val_per_class`` and at most half of each class (seeded). Bad files (missing,
empty, not an image by a cheap header check, over the pixel limit) are logged,
recorded in ``skipped`` and left out; so are validation/test images of classes
the training set lacks. A class with no usable image is a ValueError.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.config import FMNIST_BENCHMARK, DataConfig
from training.image_sets import DEFAULT_MAX_PIXELS, FileImageSet
from training.stratify import rank_within_class

logger = logging.getLogger(__name__)

# What torchvision's ImageFolder accepts, plus .gif.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SCAN_THREADS = 8


@dataclass
class _UserData:
    """The usable files of an ImageFolder tree or CSV manifest, with their class names."""

    root: Path
    paths: list[Path]
    names: list[str]  # class name of each path
    class_names: list[str]  # every class the source declares, sorted
    skipped: list[tuple[str, str]]


@dataclass
class UserSets:
    """The splits of a user data set, before fingerprinting."""

    train: FileImageSet
    val: FileImageSet
    test: FileImageSet | None
    label_names: list[str]
    skipped: list[tuple[str, str]]


def user_sets(config: DataConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> UserSets:
    """The training, validation and (optional) test sets of an ImageFolder tree or CSV manifest."""
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
        rank = rank_within_class(labels, rng.random(labels.shape[0]))
        is_val = rank < np.minimum(config.val_per_class, counts // 2)[labels]
        train = image_set(source, np.flatnonzero(~is_val), labels[~is_val])
        val = image_set(source, np.flatnonzero(is_val), labels[is_val])
    test = _labelled_set(config.test_dataset, label_names, max_pixels, skipped) if config.test_dataset else None
    return UserSets(train, val, test, label_names, skipped)


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
