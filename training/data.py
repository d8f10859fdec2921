"""Training data: the splits of the Fashion-MNIST-LT benchmark or of a user data set, and ``productrec data``.

Torch-free (NumPy and Pillow), so ``productrec data`` starts fast; the training
code wraps an ``ImageSet`` in its own torch ``Dataset``. The benchmark is built
in ``training.benchmark``, user data sets (ImageFolder trees, CSV manifests) in
``training.user_data``; the report is ``training.data_report``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.benchmark import benchmark_sets, benchmark_validation_rule
from training.config import FMNIST_BENCHMARK, DataConfig, config_from_args, user_errors
from training.catalogue import catalogue_report
from training.data_report import format_catalogue_report, format_histogram, format_validation, plot_histogram, print_skipped
from training.fashion_mnist import FASHION_MNIST_LABELS
from training.image_sets import DEFAULT_MAX_PIXELS, ImageSet
from training.stratify import ValidationRule
from training.user_data import Catalogue, user_sets

__all__ = ["ImageSet", "Splits", "build_splits", "main"]


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
    validation: ValidationRule | None = None  # how the validation split was chosen
    catalogue: Catalogue | None = None  # every usable image of a user data set, for the report


def build_splits(config: DataConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Splits:
    """The splits ``config`` describes: the ``fmnist-lt`` benchmark, an ImageFolder tree or a CSV manifest.

    Raises FileNotFoundError for missing data and ValueError for unusable data or options.
    """
    if config.val_per_class is not None and config.val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {config.val_per_class}")
    if config.dataset == FMNIST_BENCHMARK:
        train, val, test = benchmark_sets(config)
        splits = _make_splits(train, val, test, list(FASHION_MNIST_LABELS), [], benchmark_validation_rule(config))
    else:
        user = user_sets(config, max_pixels)
        splits = _make_splits(
            user.train, user.val, user.test, user.label_names, user.skipped, user.validation, user.catalogue
        )
    empty = [splits.label_names[k] for k in np.flatnonzero(splits.class_counts == 0)]
    if empty:
        raise ValueError(f"no training labels left for class(es) {', '.join(empty)} (lower the noise rate?)")
    if len(splits.val) == 0:
        raise ValueError("the validation split is empty: raise val_fraction or val_per_class, or pass a validation data set")
    return splits


def validation_summary(splits: Splits) -> dict[str, Any]:
    """The validation rule and the classes it covers, for ``productrec data`` and the run's data.json."""
    per_class = np.bincount(splits.val.labels, minlength=len(splits.label_names))
    covered = int(np.count_nonzero(per_class))
    uncovered = len(per_class) - covered
    # train.top1_error is a plain top-1 over the validation images, so classes without any do not enter it.
    error_over = (
        f"validation top-1 error: over the {len(splits.val):,} validation images, so over the {covered:,} classes "
        f"that have any; classes without validation images: {uncovered:,}"
    )
    if uncovered:
        error_over += " (they train on all their images)"
    rule = splits.validation.to_dict() if splits.validation is not None else {}
    return {**rule, "classes_with_images": covered, "classes_without_images": uncovered, "error_over": error_over}


def _make_splits(
    train: ImageSet,
    val: ImageSet,
    test: ImageSet | None,
    label_names: list[str],
    skipped: list[tuple[str, str]],
    validation: ValidationRule,
    catalogue: Catalogue | None = None,
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
        validation=validation,
        catalogue=catalogue,
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


def main(args: argparse.Namespace) -> int:
    """``productrec data``: the class histogram, noise rate, split sizes, validation rule, catalogue report and skipped files."""
    with user_errors():
        splits = build_splits(config_from_args(args).data)
    print(format_histogram(splits))
    sizes = f"train {len(splits.train):,}, val {len(splits.val):,}"
    sizes += f", test {len(splits.test):,} images" if splits.test is not None else " images, no test split"
    print(f"Splits: {sizes}; {splits.in_chans} input channel(s)")
    print(format_validation(validation_summary(splits)))
    if splits.catalogue is not None:
        print(format_catalogue_report(catalogue_report(splits.catalogue)))
    print(f"Data fingerprint: {splits.fingerprint}")
    print_skipped(splits.skipped)
    plot = getattr(args, "plot", None)
    if plot:
        plot_histogram(splits, Path(plot))
        print(f"Histogram plot: {plot}")
    return 0
