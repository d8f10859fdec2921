"""User catalogues: the proportional validation split and the ``productrec data`` report (class sizes, duplicates, sizes)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.catalogue import catalogue_report
from training.cli import add_data_arguments
from training.config import DataConfig
from training.data import Splits, build_splits, main, validation_summary
from training.stratify import proportional_counts

# A long tail from 1 to 201 images per class; "f" holds one file twice, "g" one file of "e".
CLASS_SIZES = {"a": 1, "b": 2, "c": 3, "d": 5, "e": 12, "f": 41, "g": 201}
VAL_AT_10_PERCENT = [0, 0, 1, 1, 1, 4, 20]


def write_image(path: Path, seed: int, size: tuple[int, int] = (6, 4)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A long-tailed ImageFolder, and beside its classes a CSV manifest listing the same files in the same order."""
    root = tmp_path_factory.mktemp("catalogue")
    seed = 0
    for name, count in CLASS_SIZES.items():
        (root / name).mkdir()
        for i in range(count - (name in "fg")):
            write_image(root / name / f"{i:03d}.png", seed)
            seed += 1
    write_image(root / "a" / "000.png", 999, size=(3, 2))  # the smallest image
    write_image(root / "g" / "000.png", 998, size=(10, 8))  # the largest
    shutil.copy(root / "f" / "000.png", root / "f" / "copy.png")  # a duplicate within class f
    shutil.copy(root / "e" / "000.png", root / "g" / "from_e.png")  # one content under two labels
    rows = [f"{path.relative_to(root)},{path.parent.name}" for path in sorted(root.glob("*/*.png"))]
    (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def per_class(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=len(CLASS_SIZES)).tolist()


def paths_of(splits: Splits) -> list[set[str]]:
    return [{s.describe(i) for i in range(len(s))} for s in (splits.train, splits.val)]


def test_proportional_counts_by_hand() -> None:
    counts = np.array([1, 2, 3, 5, 14, 15, 40, 1000])
    assert proportional_counts(counts, 0.1, 3).tolist() == [0, 0, 1, 1, 1, 2, 4, 100]
    assert proportional_counts(counts, 0.5, 3).tolist() == [0, 0, 2, 3, 7, 8, 20, 500]
    assert proportional_counts(np.array([3, 4]), 0.9, 3).tolist() == [2, 3]  # each class keeps one for training
    with pytest.raises(ValueError, match="val_fraction"):
        proportional_counts(counts, 0.0, 3)


@pytest.mark.parametrize("source", ["", "manifest.csv"])
def test_default_validation_is_ten_percent_per_class_and_keeps_small_classes(catalogue: Path, source: str) -> None:
    splits = build_splits(DataConfig(dataset=str(catalogue / source)))
    sizes = list(CLASS_SIZES.values())
    assert per_class(splits.val.labels) == VAL_AT_10_PERCENT
    # The classes of 1 and 2 images keep all of them; every class keeps training images.
    assert per_class(splits.train.labels) == [n - v for n, v in zip(sizes, VAL_AT_10_PERCENT)]
    assert splits.class_counts.tolist() == per_class(splits.train.labels)  # the manifest's class counts
    train, val = paths_of(splits)
    assert not train & val and len(train | val) == sum(sizes)
    assert splits.validation.kind == "fraction" and splits.validation.min_images_for_validation == 3


def test_folder_and_csv_give_the_same_split(catalogue: Path) -> None:
    folder = build_splits(DataConfig(dataset=str(catalogue)))
    manifest = build_splits(DataConfig(dataset=str(catalogue / "manifest.csv")))
    assert manifest.fingerprint == folder.fingerprint


def test_the_split_is_seeded(catalogue: Path) -> None:
    first, again = (build_splits(DataConfig(dataset=str(catalogue), data_seed=1)) for _ in range(2))
    other = build_splits(DataConfig(dataset=str(catalogue), data_seed=2))
    assert paths_of(first) == paths_of(again) and first.fingerprint == again.fingerprint
    assert paths_of(other)[1] != paths_of(first)[1]
    assert per_class(other.val.labels) == VAL_AT_10_PERCENT  # other images, the same stratification


def test_val_fraction_and_explicit_val_per_class(catalogue: Path) -> None:
    quarter = build_splits(DataConfig(dataset=str(catalogue), val_fraction=0.25))
    assert per_class(quarter.val.labels) == [0, 0, 1, 1, 3, 10, 50]
    # An explicit count replaces the fraction: that many, at most half of each class.
    fixed = build_splits(DataConfig(dataset=str(catalogue), val_per_class=3, val_fraction=0.25))
    assert per_class(fixed.val.labels) == [0, 1, 1, 2, 3, 3, 3]
    assert fixed.validation.kind == "per class" and fixed.validation.val_per_class == 3
    with pytest.raises(ValueError, match="val_fraction"):
        build_splits(DataConfig(dataset=str(catalogue), val_fraction=1.0))


def test_validation_summary_names_the_classes_the_error_covers(catalogue: Path) -> None:
    summary = validation_summary(build_splits(DataConfig(dataset=str(catalogue))))
    assert summary["kind"] == "fraction" and summary["val_fraction"] == 0.1
    assert summary["classes_with_images"] == 5 and summary["classes_without_images"] == 2
    assert "over the 27 validation images, so over the 5 classes" in summary["error_over"]


def test_catalogue_report_figures(catalogue: Path) -> None:
    report = catalogue_report(build_splits(DataConfig(dataset=str(catalogue / "manifest.csv"))).catalogue)
    assert (report.images, report.classes) == (sum(CLASS_SIZES.values()), len(CLASS_SIZES))
    assert (report.largest_class, report.smallest_class, report.imbalance_ratio) == (201, 1, 201.0)
    assert report.classes_below == {5: 3, 20: 5, 100: 6}
    assert (report.duplicates_within_class, report.classes_with_duplicates) == (1, 1)
    assert (report.cross_class_contents, report.cross_class_images, report.cross_class_classes) == (1, 2, 2)
    [(path, classes)] = report.cross_class_examples
    assert Path(path).name == "000.png" and classes == ["e", "g"]
    assert (report.width.min, report.width.median, report.width.max) == (3, 6.0, 10)
    assert (report.height.min, report.height.median, report.height.max) == (2, 4.0, 8)


def test_repeated_manifest_rows_are_duplicates_of_one_file(tmp_path: Path) -> None:
    for i in range(4):
        write_image(tmp_path / f"{i}.png", i)
    rows = ["0.png,x", "1.png,x", "0.png,x", "2.png,y", "3.png,y", "0.png,y"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    report = catalogue_report(build_splits(DataConfig(dataset=str(tmp_path / "m.csv"))).catalogue)
    assert report.duplicates_within_class == 1 and report.cross_class_contents == 1 and report.cross_class_images == 3


def test_productrec_data_reports_the_validation_rule_and_the_catalogue(
    catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    assert main(parser.parse_args(["--dataset", str(catalogue), "--val-fraction", "0.1"])) == 0
    output = capsys.readouterr().out
    assert "Validation split: 10% of each class" in output and "fewer than 3 images keep all" in output
    assert "classes without validation images: 2" in output
    assert "imbalance ratio n_max/n_min: 201/1 = 201.0" in output
    assert "classes with fewer than 5 / 20 / 100 images: 3 / 5 / 6" in output
    assert "within a class: 1;" in output and "label noise?): 1;" in output
    assert "width 3 / 6 / 10, height 2 / 4 / 8" in output
