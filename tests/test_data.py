"""The data layer: the Fashion-MNIST-LT benchmark's splits, user data sets, the report (building blocks: test_benchmark_parts.py)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import CommandError
from training.config import DEFAULT_FMNIST_DIR, DataConfig
from training.benchmark import SIMILAR_CLASS, long_tail_counts
from training.data import Splits, build_splits, main
from training.data_report import format_histogram, plot_histogram
from training.fashion_mnist import (
    FASHION_MNIST_LABELS,
    load_fashion_mnist,
    load_fashion_mnist_as_shot,
)
from training.image_sets import ArrayImageSet, BadImageError

# --------------------------------------------------------------------------- generated image files


def write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (20, 16)) -> Path:
    """A small random image; the format follows the suffix (PNG, JPEG, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A corrupt image, a zero-byte image and a truncated PNG (its header reads; its pixels do not)."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"these bytes are not a JPEG" * 10)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return {"corrupt": corrupt, "empty": empty}


CLASS_SIZES = {"boots": 6, "hats": 4, "shirts": 3}


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder tree: 3 classes of PNG/JPEG (RGB, grey, RGBA, nested folder), plus bad files."""
    root = tmp_path / "catalogue"
    seed = 0
    for name, count in CLASS_SIZES.items():
        for i in range(count):
            suffix, mode = [(".png", "RGB"), (".jpg", "RGB"), (".png", "L"), (".png", "RGBA")][i % 4]
            folder = root / name / ("nested" if i == 1 else "")
            write_image(folder / f"{name}_{i}{suffix}", seed, mode)
            seed += 1
    write_bad_files(root / "hats")
    (root / "boots" / "notes.txt").write_text("not an image")
    (root / "boots" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("top-level file")
    return root


def bad_reasons(splits: Splits) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in splits.skipped}


# --------------------------------------------------------------------------- the benchmark


@pytest.fixture(scope="module")
def benchmark() -> Splits:
    return build_splits(DataConfig())  # rho = 100, 40% symmetric noise, 500 validation images per class


def test_benchmark_training_split_follows_the_long_tail(benchmark: Splits) -> None:
    train = benchmark.train
    assert np.bincount(train.clean_labels, minlength=10).tolist() == long_tail_counts(5500, 10, 100.0).tolist()
    assert benchmark.class_counts.tolist() == np.bincount(train.labels, minlength=10).tolist()
    assert benchmark.class_counts.sum() == len(train) == 13646
    assert benchmark.label_names == list(FASHION_MNIST_LABELS)
    assert benchmark.in_chans == train.in_chans == 1


def test_benchmark_noise_is_in_the_training_split_only(benchmark: Splits) -> None:
    train = benchmark.train
    assert benchmark.noise_rate_realised == pytest.approx(np.mean(train.labels != train.clean_labels))
    assert benchmark.noise_rate_realised == pytest.approx(0.4, abs=0.02)
    _, file_train_labels, _, file_test_labels = load_fashion_mnist(DEFAULT_FMNIST_DIR)
    assert np.array_equal(train.clean_labels, file_train_labels[train.source_indices])
    for split, file_labels in [(benchmark.val, file_train_labels), (benchmark.test, file_test_labels)]:
        assert np.array_equal(split.labels, file_labels[split.source_indices])
        assert np.array_equal(split.labels, split.clean_labels)


def test_benchmark_validation_is_balanced_and_disjoint(benchmark: Splits) -> None:
    val, test = benchmark.val, benchmark.test
    assert np.bincount(val.labels).tolist() == [500] * 10
    assert not set(val.source_indices.tolist()) & set(benchmark.train.source_indices.tolist())
    assert len(test) == 10000 and np.bincount(test.labels).tolist() == [1000] * 10


def test_benchmark_images_load_and_describe_themselves(benchmark: Splits) -> None:
    train_images, *_ = load_fashion_mnist_as_shot(DEFAULT_FMNIST_DIR)
    index = int(benchmark.train.source_indices[7])
    image = benchmark.train.load(7)
    assert image.mode == "L" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image), train_images[index])
    assert benchmark.train.describe(7) == f"fashion-mnist train #{index}"
    assert benchmark.test.describe(3) == "fashion-mnist test #3"
    image, label = benchmark.val[0]
    assert label == benchmark.val.labels[0] and image.size == (28, 28)


def test_benchmark_is_deterministic_by_seed(benchmark: Splits) -> None:
    again = build_splits(DataConfig())
    assert again.fingerprint == benchmark.fingerprint
    assert np.array_equal(again.train.source_indices, benchmark.train.source_indices)
    assert np.array_equal(again.train.labels, benchmark.train.labels)
    other = build_splits(DataConfig(data_seed=1))
    assert other.fingerprint != benchmark.fingerprint
    assert not np.array_equal(other.train.source_indices, benchmark.train.source_indices)
    assert not np.array_equal(other.val.source_indices, benchmark.val.source_indices)
    # Noise and profile options do not move the validation split.
    clean = build_splits(DataConfig(noise_rate=0.0, imbalance_ratio=10.0))
    assert np.array_equal(clean.val.source_indices, benchmark.val.source_indices)
    assert clean.fingerprint != benchmark.fingerprint


def test_benchmark_options(benchmark: Splits) -> None:
    config = DataConfig(
        imbalance_ratio=10.0,
        max_per_class=100,
        val_per_class=50,
        test_per_class=20,
        noise_rate=0.3,
        noise_type="asymmetric",
    )
    splits = build_splits(config)
    assert np.bincount(splits.train.clean_labels).tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert np.bincount(splits.val.labels).tolist() == [50] * 10
    assert np.bincount(splits.test.labels).tolist() == [20] * 10
    flipped = splits.train.labels != splits.train.clean_labels
    assert flipped.any()
    assert all(SIMILAR_CLASS[c] == n for c, n in zip(splits.train.clean_labels[flipped], splits.train.labels[flipped]))
    # The test subset is the first images of each class in file order, the same for every seed.
    other_seed = build_splits(DataConfig(data_seed=9, test_per_class=20))
    assert np.array_equal(other_seed.test.source_indices, splits.test.source_indices)
    assert np.array_equal(build_splits(DataConfig(noise_rate=0.0)).train.labels, benchmark.train.clean_labels)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_per_class": 6000}, "val_per_class"),
        ({"val_per_class": 0}, "val_per_class"),
        ({"max_per_class": 5600}, "max_per_class"),
        ({"max_per_class": 0}, "max_per_class"),
        ({"test_per_class": 1001}, "test_per_class"),
        ({"noise_rate": 1.2}, "noise rate"),
        ({"noise_rate": 1.0, "noise_type": "asymmetric"}, "Sandal"),  # nothing maps to Sandal
        ({"val_dataset": "val.csv"}, "user data sets"),
    ],
)
def test_benchmark_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_splits(DataConfig(**options))


def test_benchmark_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        build_splits(DataConfig(fmnist_dir=str(tmp_path)))


# --------------------------------------------------------------------------- user data sets


def test_image_folder_reports_and_skips_bad_files(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.user_data"):
        splits = build_splits(DataConfig(dataset=str(image_folder), val_per_class=1))
    assert splits.label_names == ["boots", "hats", "shirts"]
    reasons = bad_reasons(splits)
    assert set(reasons) == {"corrupt.jpg", "empty.png", "notes.txt", "README.md"}
    assert reasons["corrupt.jpg"] == "not an image (no format Pillow recognises)"
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "extension" in reasons["notes.txt"] and "class folder" in reasons["README.md"]
    for path, _ in splits.skipped:
        assert path in caplog.text  # each reported with its path
    described = [s.describe(i) for s in (splits.train, splits.val) for i in range(len(s))]
    assert len(described) == sum(CLASS_SIZES.values()) == len(set(described))
    assert not any(Path(p).name in reasons for p in described)
    assert splits.in_chans == 3 and splits.test is None
    assert splits.noise_rate_realised is None and splits.train.clean_labels is None


def test_image_folder_stratified_validation_keeps_training_images(image_folder: Path) -> None:
    splits = build_splits(DataConfig(dataset=str(image_folder), val_per_class=2))
    # At most val_per_class and at most half of each class go to validation.
    assert np.bincount(splits.val.labels, minlength=3).tolist() == [2, 2, 1]
    assert splits.class_counts.tolist() == [4, 2, 2]
    assert splits.class_counts.tolist() == np.bincount(splits.train.labels, minlength=3).tolist()
    assert not {splits.train.describe(i) for i in range(len(splits.train))} & {
        splits.val.describe(i) for i in range(len(splits.val))
    }
    image, label = splits.train[0]
    assert image.mode == "RGB" and label == splits.train.labels[0]
    again = build_splits(DataConfig(dataset=str(image_folder), val_per_class=2))
    other = build_splits(DataConfig(dataset=str(image_folder), val_per_class=2, data_seed=3))
    assert again.fingerprint == splits.fingerprint
    assert other.fingerprint != splits.fingerprint
    # Only the images and labels define the data: noise options do not apply to user data.
    without_noise = build_splits(DataConfig(dataset=str(image_folder), val_per_class=2, noise_rate=0.0))
    assert without_noise.fingerprint == splits.fingerprint


def test_truncated_file_fails_at_load_with_its_path(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(2):
        write_image(root / "a" / f"{i}.png", i)
        write_image(root / "b" / f"{i}.png", i + 10)
    big = write_image(root / "a" / "truncated.png", 99, size=(200, 200))
    big.write_bytes(big.read_bytes()[:300])  # the header still reads, the pixels do not
    splits = build_splits(DataConfig(dataset=str(root), val_per_class=1))
    assert not splits.skipped  # the cheap scan reads headers only
    [(image_set, index)] = [
        (s, i) for s in (splits.train, splits.val) for i in range(len(s)) if s.describe(i) == str(big.resolve())
    ]
    with pytest.raises(BadImageError) as error:
        image_set.load(index)
    assert str(big.resolve()) in str(error.value) and error.value.path == str(big.resolve())


def test_images_over_the_pixel_limit_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(2):
        write_image(root / "a" / f"{i}.png", i, size=(20, 20))
        write_image(root / "b" / f"{i}.png", i + 10, size=(20, 20))
    write_image(root / "b" / "poster.png", 5, size=(40, 30))
    splits = build_splits(DataConfig(dataset=str(root), val_per_class=1), max_pixels=1000)
    poster = str((root / "b" / "poster.png").resolve())
    assert splits.skipped == [(poster, "image is 40x30 = 1200 pixels; the limit is 1000")]
    assert len(splits.train) + len(splits.val) == 4


def test_fingerprint_does_not_depend_on_where_the_data_lies(image_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(image_folder, tmp_path / "copy" / "catalogue")
    original = build_splits(DataConfig(dataset=str(image_folder), val_per_class=1))
    moved = build_splits(DataConfig(dataset=str(copy), val_per_class=1))
    assert moved.fingerprint == original.fingerprint
    (copy / "shirts" / "shirts_0.png").rename(copy / "shirts" / "renamed.png")
    assert build_splits(DataConfig(dataset=str(copy), val_per_class=1)).fingerprint != original.fingerprint


def test_csv_manifest_resolves_paths_and_reports_bad_rows(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rows = []
    for i in range(8):
        label = ["sku-b", "sku-a"][i % 2]
        write_image(images / f"{i}.jpg", i)
        rows.append(f"images/{i}.jpg,{label}")
    elsewhere = write_image(tmp_path / "elsewhere" / "absolute.png", 50)
    bad = write_bad_files(images)
    rows += [f"{elsewhere},sku-c", f"{elsewhere},sku-c"]  # lines 10-11
    rows += ["images/missing.png,sku-a", "images/corrupt.jpg,sku-a", "images/empty.png,sku-b", ",sku-a"]  # 12-15
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    splits = build_splits(DataConfig(dataset=str(manifest), val_per_class=1))
    assert splits.label_names == ["sku-a", "sku-b", "sku-c"]  # sorted class names
    reasons = dict(splits.skipped)
    assert reasons[str(images / "missing.png")] == "file not found"
    assert str(bad["corrupt"]) in reasons and str(bad["empty"]) in reasons
    assert reasons[f"{manifest}:15"] == "row without a path or a label"
    assert len(splits.train) + len(splits.val) == 10
    assert splits.class_counts.tolist() == [3, 3, 1]
    names = {splits.train.describe(i) for i in range(len(splits.train))}
    assert str(elsewhere) in names


def test_csv_validation_and_test_sets_with_unknown_labels(tmp_path: Path) -> None:
    def manifest(name: str, labels: list[str]) -> Path:
        rows = [f"{name}/{i}.png,{label}" for i, label in enumerate(labels)]
        for i in range(len(labels)):
            write_image(tmp_path / name / f"{i}.png", len(name) * 100 + i)
        path = tmp_path / f"{name}.csv"
        path.write_text("path,label,comment\n" + "\n".join(f"{row},x" for row in rows) + "\n")
        return path

    train = manifest("train", ["a", "b", "a", "b"])
    val = manifest("val", ["a", "b", "c"])
    test = manifest("test", ["b", "a"])
    splits = build_splits(DataConfig(dataset=str(train), val_dataset=str(val), test_dataset=str(test)))
    assert len(splits.train) == 4 and len(splits.val) == 2 and len(splits.test) == 2
    assert splits.skipped == [(str(tmp_path / "val" / "2.png"), "class 'c' is not one of the training classes")]
    assert splits.test.labels.tolist() == [1, 0]


def only_top_level_files(root: Path) -> Path:
    write_image(root / "loose.png", 0)
    return root


def only_bad_files(root: Path) -> Path:
    write_bad_files(root / "a")
    return root


def one_empty_class(root: Path) -> Path:
    write_image(root / "a" / "0.png", 0)
    write_image(root / "a" / "1.png", 1)
    (root / "b").mkdir()
    return root


def csv_file(text: str, suffix: str = ".csv"):
    def make(root: Path) -> Path:
        root.mkdir()
        (root / f"manifest{suffix}").write_text(text)
        return root / f"manifest{suffix}"

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (only_top_level_files, "no class folders"),
        (only_bad_files, "no usable images"),
        (one_empty_class, "no usable images for class.*b"),
        (csv_file("file,class\nx.png,a\n"), "header 'path,label'"),
        (csv_file("path,label\n"), "no usable images"),
        (csv_file("path,label\n", suffix=".txt"), "expected an ImageFolder"),
    ],
)
def test_unusable_user_data_is_a_clear_value_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_splits(DataConfig(dataset=str(make(tmp_path / "data"))))


def test_missing_user_data_set_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        build_splits(DataConfig(dataset=str(tmp_path / "nope")))


# --------------------------------------------------------------------------- report and CLI


def test_format_histogram_lists_every_class_and_the_noise(benchmark: Splits) -> None:
    text = format_histogram(benchmark)
    for name in FASHION_MNIST_LABELS:
        assert name in text
    assert f"{benchmark.noise_rate_realised:.2%}" in text
    assert "5,500/55 = 100.0" in text  # the clean profile's imbalance


def test_many_classes_get_a_summary_and_a_sorted_plot_instead_of_rows(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(100), np.arange(100, 0, -1))
    images = np.zeros((labels.size, 2, 2), dtype=np.uint8)
    image_set = ArrayImageSet(images, labels, None, np.arange(labels.size), "generated")
    names = [f"class-{k}" for k in range(100)]
    splits = Splits(image_set, image_set, None, names, np.bincount(labels), "0" * 64, [], 1, None)
    text = format_histogram(splits)
    assert "class-" not in text and len(text.splitlines()) == 3
    assert "100/1 = 100.0" in text and "max 100, median 50.5, min 1" in text and "unknown" in text
    plot_histogram(splits, tmp_path / "sorted.png")
    with Image.open(tmp_path / "sorted.png") as image:
        assert image.format == "PNG"


def test_main_prints_histogram_and_writes_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "plots" / "histogram.png"
    assert main(argparse.Namespace(dataset="fmnist-lt", noise_type="asymmetric", plot=plot)) == 0
    output = capsys.readouterr().out
    assert "Ankle boot" in output and "Label noise realised" in output
    assert "train 13,646, val 5,000, test 10,000" in output
    assert "Validation split: a clean, balanced hold-out of 500 images per class" in output  # not --val-fraction
    assert "Catalogue" not in output
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300


def test_main_lists_skipped_files_and_maps_errors(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argparse.Namespace(dataset=str(image_folder), val_per_class=1)) == 0
    output = capsys.readouterr().out
    assert "Skipped files: 4" in output and str(image_folder / "hats" / "corrupt.jpg") in output
    with pytest.raises(CommandError, match="not found"):
        main(argparse.Namespace(dataset=str(image_folder / "missing")))


def test_readable_batches_leave_out_and_report_unreadable_images() -> None:
    from training.image_sets import BadImageError, ImageSet, readable_batches

    class HalfBroken(ImageSet):
        labels, clean_labels, in_chans = np.arange(5), None, 1

        def load(self, index: int, shorter_side: int | None = None) -> Image.Image:
            if index in (1, 3, 4):
                raise BadImageError(f"{index}.png", "broken")
            return Image.new("L", (4, 4), index)

        def describe(self, index: int) -> str:
            return f"{index}.png"

        def identity(self) -> bytes:
            return b""

    skipped: list[str] = []
    batches = list(readable_batches(HalfBroken(), range(5), 2, "test", skipped=skipped))
    assert [kept for _, kept in batches] == [[0], [2]]  # the batch of 4 alone, all unreadable, is not yielded
    assert [image.getpixel((0, 0)) for decoded, _ in batches for image in decoded] == [0, 2]
    assert skipped == ["1.png: broken", "3.png: broken", "4.png: broken"]
