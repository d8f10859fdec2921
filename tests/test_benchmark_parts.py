"""The benchmark's building blocks: the long-tail profile, label noise and the Fashion-MNIST files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.benchmark import SIMILAR_CLASS, inject_noise, long_tail_counts
from training.config import DEFAULT_FMNIST_DIR
from training.fashion_mnist import (
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    STORED_MEAN,
    STORED_STD,
    load_fashion_mnist,
    load_fashion_mnist_as_shot,
)


# --------------------------------------------------------------------------- long tail


def test_long_tail_counts_match_hand_values() -> None:
    # 5500 * 100^(-i/9): 5500, 3297.2, 1976.6, 1184.9, 710.4, 425.8, 255.3, 153.0, 91.7, 55
    expected = [5500, 3297, 1976, 1184, 710, 425, 255, 153, 91, 55]
    assert long_tail_counts(5500, 10, 100.0).tolist() == expected
    assert long_tail_counts(1000, 3, 10.0).tolist() == [1000, 316, 100]  # 1000 / sqrt(10) = 316.2
    assert long_tail_counts(50, 4, 1.0).tolist() == [50, 50, 50, 50]
    assert long_tail_counts(7, 1, 100.0).tolist() == [7]


def test_long_tail_counts_respect_rho_and_floor_at_one() -> None:
    counts = long_tail_counts(6000, 10, 50.0)
    assert counts[0] / counts[-1] == pytest.approx(50.0, rel=1e-3)
    assert np.all(np.diff(counts) < 0)
    assert long_tail_counts(5, 2, 100.0).tolist() == [5, 1]  # 0.05 rounds down to 0, raised to 1
    for bad in [(0, 10, 10.0), (10, 0, 10.0), (10, 10, 0.5)]:
        with pytest.raises(ValueError):
            long_tail_counts(*bad)


# --------------------------------------------------------------------------- label noise


BALANCED = np.repeat(np.arange(10), 3000)


@pytest.mark.parametrize("noise_type", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_rate_realised_within_tolerance(noise_type: str, rate: float) -> None:
    noisy = inject_noise(BALANCED, 10, rate, noise_type, np.random.default_rng(1))
    # 30,000 Bernoulli(r) flips: the standard deviation of the rate is below 0.003.
    assert np.mean(noisy != BALANCED) == pytest.approx(rate, abs=0.012)
    assert noisy.dtype == np.int64 and noisy.shape == BALANCED.shape


def test_symmetric_noise_flips_uniformly_to_other_classes() -> None:
    noisy = inject_noise(BALANCED, 10, 1.0, "symmetric", np.random.default_rng(2))
    assert np.all(noisy != BALANCED)  # rate 1: every label flipped, never to itself
    transitions = np.zeros((10, 10), dtype=np.int64)
    np.add.at(transitions, (BALANCED, noisy), 1)
    off_diagonal = transitions[~np.eye(10, dtype=bool)]
    # 3000 flips per class spread over 9 targets: 333 each, standard deviation ~17.
    assert off_diagonal.min() > 260 and off_diagonal.max() < 410


def test_asymmetric_noise_flips_only_to_the_similar_class() -> None:
    noisy = inject_noise(BALANCED, 10, 0.4, "asymmetric", np.random.default_rng(3))
    flipped = noisy != BALANCED
    expected = np.array([SIMILAR_CLASS[k] for k in BALANCED[flipped]])
    assert np.array_equal(noisy[flipped], expected)
    for clean in range(10):  # every class flips, at about the rate
        assert np.mean(flipped[BALANCED == clean]) == pytest.approx(0.4, abs=0.04)


def test_similar_class_map_pairs_look_alikes() -> None:
    assert sorted(SIMILAR_CLASS) == list(range(10))
    assert all(source != target for source, target in SIMILAR_CLASS.items())
    names = {FASHION_MNIST_LABELS[s]: FASHION_MNIST_LABELS[t] for s, t in SIMILAR_CLASS.items()}
    for a, b in [("Shirt", "T-shirt/top"), ("Pullover", "Coat"), ("Sneaker", "Ankle boot")]:
        assert names[a] == b and names[b] == a


def test_noise_is_deterministic_and_validated() -> None:
    first = inject_noise(BALANCED, 10, 0.3, "symmetric", np.random.default_rng(4))
    again = inject_noise(BALANCED, 10, 0.3, "symmetric", np.random.default_rng(4))
    other = inject_noise(BALANCED, 10, 0.3, "symmetric", np.random.default_rng(5))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(inject_noise(BALANCED, 10, 0.0, "asymmetric", np.random.default_rng(0)), BALANCED)
    labels = BALANCED.copy()
    inject_noise(labels, 10, 0.5, "symmetric", np.random.default_rng(0))
    assert np.array_equal(labels, BALANCED)  # the input is not modified
    for rate, noise_type, n_classes in [(1.5, "symmetric", 10), (0.2, "pairwise", 10), (0.2, "asymmetric", 12)]:
        with pytest.raises(ValueError):
            inject_noise(BALANCED, n_classes, rate, noise_type, np.random.default_rng(0))


# --------------------------------------------------------------------------- Fashion-MNIST files


def test_load_fashion_mnist_reads_the_installed_files() -> None:
    train_images, train_labels, test_images, test_labels = load_fashion_mnist(DEFAULT_FMNIST_DIR)
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28)
    assert train_labels.dtype == np.int64 and test_labels.dtype == np.int64
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert pixel_statistics(train_images) == pytest.approx((STORED_MEAN, STORED_STD), abs=1e-5)
    assert load_fashion_mnist(DEFAULT_FMNIST_DIR)[0] is train_images  # cached within the process
    assert not train_images.flags.writeable  # so the cache cannot be altered


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation on the 0..1 scale, exact (from the histogram, no float copy)."""
    frequency = np.bincount(images.ravel(), minlength=256) / images.size
    values = np.arange(256) / 255.0
    mean = float(frequency @ values)
    return mean, float(np.sqrt(frequency @ (values - mean) ** 2))


def test_fashion_mnist_as_shot_is_the_product_on_white_with_its_own_statistics() -> None:
    stored_train, labels, stored_test, _ = load_fashion_mnist(DEFAULT_FMNIST_DIR)
    train_images, shot_labels, test_images, _ = load_fashion_mnist_as_shot(DEFAULT_FMNIST_DIR)
    assert np.array_equal(train_images.astype(int), 255 - stored_train.astype(int)) and shot_labels is labels
    assert np.array_equal(test_images[:100].astype(int), 255 - stored_test[:100].astype(int))
    # The background (the border of every image) is white, the product dark.
    assert np.median(np.concatenate([test_images[:, 0], test_images[:, -1]])) == 255
    assert pixel_statistics(train_images) == pytest.approx((FASHION_MNIST_MEAN, FASHION_MNIST_STD), abs=1e-5)
    assert load_fashion_mnist_as_shot(DEFAULT_FMNIST_DIR)[0] is train_images and not train_images.flags.writeable


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes((0, 0, 0x08, array.ndim)) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_load_fashion_mnist_reads_uncompressed_and_rejects_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9])
    for prefix, compress in [("train", False), ("t10k", True)]:
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{'.gz' if compress else ''}", images, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{'.gz' if compress else ''}", labels, compress)
    train_images, train_labels, test_images, test_labels = load_fashion_mnist(tmp_path)
    assert np.array_equal(train_images, images) and np.array_equal(test_labels, labels)

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tmp_path.glob("*ubyte*"):
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "train-labels-idx1-ubyte").write_bytes(bytes((0, 0, 8, 1)) + (7).to_bytes(4, "big") + b"\0" * 5)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*shape"):
        load_fashion_mnist(broken)


def test_load_fashion_mnist_missing_names_the_path_and_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_fashion_mnist(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--fmnist-dir" in message
