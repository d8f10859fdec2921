"""User data sets: ImageFolder trees and ``path,label`` CSV manifests, listed, checked and split.

An ImageFolder tree has one sub-folder per class (class names sorted); a CSV
manifest's labels are class names (sorted). User data gets in_chans 3 and no
injected noise: the noise, long-tail and ``test_per_class`` options apply to
the benchmark only. Without ``val_dataset`` the validation split takes
``val_fraction`` of each class (stratified, seeded; classes of fewer than
``MIN_IMAGES_FOR_VALIDATION`` images keep all of theirs for training), or, with
``val_per_class``, that many and at most half of each class. Bad files (missing,
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
from typing import Callable, NamedTuple, Sequence, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.config import FMNIST_BENCHMARK, MIN_IMAGES_FOR_VALIDATION, DataConfig
from training.image_sets import DEFAULT_MAX_PIXELS, FileImageSet
from training.stratify import ValidationRule, capped_counts, proportional_counts, stratified_mask

logger = logging.getLogger(__name__)

# What torchvision's ImageFolder accepts, plus .gif.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SCAN_THREADS = 8
# Files per thread-pool task: a task per file costs more than reading a header.
SCAN_CHUNK = 256

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _UserData:
    """The usable files of an ImageFolder tree or CSV manifest, with their class names."""

    root: Path
    paths: list[Path]
    names: list[str]  # class name of each path
    class_names: list[str]  # every class the source declares, sorted
    skipped: list[tuple[str, str]]
    sizes: np.ndarray  # [N, 2] width and height of each image, from its header


@dataclass
class Catalogue:
    """Every usable image of a user data set, before the validation split: what ``productrec data`` reports on."""

    location: str
    paths: list[Path]
    labels: np.ndarray
    label_names: list[str]
    sizes: np.ndarray  # [N, 2] width and height, from the file headers


@dataclass
class UserSets:
    """The splits of a user data set, before fingerprinting."""

    train: FileImageSet
    val: FileImageSet
    test: FileImageSet | None
    label_names: list[str]
    skipped: list[tuple[str, str]]
    validation: ValidationRule
    catalogue: Catalogue


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
        rule = ValidationRule("data set", f"the separate validation data set {config.val_dataset}")
    else:
        per_class, rule = _validation_counts(config, counts)
        is_val = stratified_mask(labels, per_class, config.data_seed)
        train = image_set(source, np.flatnonzero(~is_val), labels[~is_val])
        val = image_set(source, np.flatnonzero(is_val), labels[is_val])
    test = _labelled_set(config.test_dataset, label_names, max_pixels, skipped) if config.test_dataset else None
    catalogue = Catalogue(config.dataset, source.paths, labels, label_names, source.sizes)
    return UserSets(train, val, test, label_names, skipped, rule, catalogue)


def _validation_counts(config: DataConfig, counts: np.ndarray) -> tuple[np.ndarray, ValidationRule]:
    """Validation images per class: a fixed count when ``val_per_class`` is given, else ``val_fraction`` of each class."""
    if config.val_per_class is not None:
        rule = ValidationRule(
            "per class",
            f"{config.val_per_class} images per class, at most half of each (stratified, seed {config.data_seed})",
            val_per_class=config.val_per_class,
        )
        return capped_counts(counts, config.val_per_class), rule
    minimum = MIN_IMAGES_FOR_VALIDATION
    rule = ValidationRule(
        "fraction",
        f"{config.val_fraction * 100:g}% of each class, at least 1 (stratified, seed {config.data_seed}); "
        f"classes of fewer than {minimum} images keep all of theirs for training",
        val_fraction=config.val_fraction,
        min_images_for_validation=minimum,
    )
    return proportional_counts(counts, config.val_fraction, minimum), rule


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
    headers = _scan(paths=[p for p, _ in entries], max_pixels=max_pixels)
    usable = []
    for (file, name), header in zip(entries, headers):
        if header.problem is None:
            usable.append((file, name, header.width, header.height))
        else:
            _report(skipped, file, header.problem)
    if not usable:
        raise ValueError(f"data set {location}: no usable images ({len(skipped)} file(s) skipped)")
    files, names, widths, heights = zip(*usable)
    sizes = np.stack([np.array(widths, dtype=np.int64), np.array(heights, dtype=np.int64)], axis=1)
    return _UserData(root, list(files), list(names), class_names, skipped, sizes)


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
    resolved: dict[str, Path] = {}  # one Path per distinct row path: manifests repeat files
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
                    file = resolved.get(path)
                    if file is None:
                        file = resolved[path] = manifest.parent / path
                    entries.append((file, label))
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


class ImageHeader(NamedTuple):
    """What the cheap check of one file found: why it is unusable (None when fine) and its size."""

    problem: str | None
    width: int = 0
    height: int = 0


def _scan(paths: Sequence[Path], max_pixels: int) -> list[ImageHeader]:
    """The header of each file, checked cheaply in a thread pool; once per distinct path (manifests repeat files)."""
    distinct = list(dict.fromkeys(paths))
    # Process-wide and so set once here, not per file in the threads: over-limit images are reported anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        headers = map_in_threads(lambda path: read_image_header(path, max_pixels), distinct, "checking images")
    by_path = dict(zip(distinct, headers))
    return [by_path[path] for path in paths]


def map_in_threads(function: Callable[[Item], Result], items: Sequence[Item], description: str) -> list[Result]:
    """``[function(item) for item in items]`` in ``SCAN_THREADS`` threads, ``SCAN_CHUNK`` items per task, with progress."""
    from tqdm import tqdm

    chunks = [items[start : start + SCAN_CHUNK] for start in range(0, len(items), SCAN_CHUNK)]
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool, tqdm(
        total=len(items), desc=description, unit="file", disable=len(items) < 1000
    ) as progress:
        for chunk_results in pool.map(lambda chunk: [function(item) for item in chunk], chunks):
            results.extend(chunk_results)
            progress.update(len(chunk_results))
    return results


def read_image_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The size of ``path`` if it is a usable image: it exists, is not empty, and Pillow reads its header.

    Cheap (no pixels are decoded), so a truncated file can still fail later in ``ImageSet.load``.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return ImageHeader("file not found")
    except OSError as exc:
        return ImageHeader(f"cannot access the file: {exc.strerror or exc}")
    if not stat.S_ISREG(status.st_mode):
        return ImageHeader("not a regular file")
    if status.st_size == 0:
        return ImageHeader("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return ImageHeader("not an image (no format Pillow recognises)")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return ImageHeader(f"not a readable image: {exc}")
    if width * height > max_pixels:
        return ImageHeader(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", width, height)
    return ImageHeader(None, width, height)
