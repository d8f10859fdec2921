"""The Fashion-MNIST-LT benchmark: the long-tail profile, label noise and the benchmark's splits.

Deterministic by ``data_seed``:

1. ``val_per_class`` images per class (default ``BENCHMARK_VAL_PER_CLASS``) are held out of the 60,000 official
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

Every split holds the images as shot (``as_shot``: the product on white), not the stored negatives.
"""

from __future__ import annotations

import numpy as np

from training.config import BENCHMARK_VAL_PER_CLASS, FMNIST_BENCHMARK, DataConfig
from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist_as_shot
from training.image_sets import ArrayImageSet
from training.stratify import ValidationRule, rank_within_class

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


def benchmark_val_per_class(config: DataConfig) -> int:
    return BENCHMARK_VAL_PER_CLASS if config.val_per_class is None else config.val_per_class


def benchmark_validation_rule(config: DataConfig) -> ValidationRule:
    val_per_class = benchmark_val_per_class(config)
    return ValidationRule(
        "balanced hold-out",
        f"a clean, balanced hold-out of {val_per_class} images per class (seed {config.data_seed})",
        val_per_class=val_per_class,
    )


def benchmark_sets(config: DataConfig) -> tuple[ArrayImageSet, ArrayImageSet, ArrayImageSet]:
    """The training (long-tailed, noisy), validation (clean, balanced) and test splits of ``fmnist-lt``."""
    val_per_class = benchmark_val_per_class(config)
    if config.val_dataset or config.test_dataset:
        raise ValueError(f"--val-dataset and --test-dataset are for user data sets, not {FMNIST_BENCHMARK}")
    if val_per_class < 1:
        raise ValueError(f"{FMNIST_BENCHMARK} needs val_per_class >= 1, got {val_per_class}")
    train_images, train_labels, test_images, test_labels = load_fashion_mnist_as_shot(config.fmnist_dir)
    n_classes = len(FASHION_MNIST_LABELS)
    split_rng, noise_rng = (np.random.default_rng(seed) for seed in np.random.SeedSequence(config.data_seed).spawn(2))

    rank = rank_within_class(train_labels, split_rng.random(train_labels.shape[0]))
    available = np.bincount(train_labels, minlength=n_classes) - val_per_class
    if available.min() < 1:
        raise ValueError(
            f"val_per_class {val_per_class} leaves no training images for some class "
            f"(each has at most {available.min() + val_per_class})"
        )
    n_max = config.max_per_class if config.max_per_class is not None else int(available.max())
    if n_max < 1:
        raise ValueError(f"max_per_class must be >= 1, got {n_max}")
    counts = long_tail_counts(n_max, n_classes, config.imbalance_ratio)
    if (counts > available).any():
        raise ValueError(
            f"max_per_class {n_max} exceeds the {available.min()} images per class left after holding out "
            f"{val_per_class} per class for validation"
        )
    val_indices = np.flatnonzero(rank < val_per_class)
    pool_rank = rank - val_per_class  # rank among the images left after the hold-out
    train_indices = np.flatnonzero((pool_rank >= 0) & (pool_rank < counts[train_labels]))
    clean = train_labels[train_indices]
    noisy = inject_noise(clean, n_classes, config.noise_rate, config.noise_type, noise_rng)

    if config.test_per_class is not None:
        smallest = int(np.bincount(test_labels, minlength=n_classes).min())
        if not 1 <= config.test_per_class <= smallest:
            raise ValueError(f"test_per_class must be between 1 and {smallest}, got {config.test_per_class}")
        file_order = rank_within_class(test_labels, np.zeros(test_labels.shape[0]))
        test_indices = np.flatnonzero(file_order < config.test_per_class)
    else:
        test_indices = np.arange(test_labels.shape[0])

    train = ArrayImageSet(train_images[train_indices], noisy, clean, train_indices, "fashion-mnist train")
    val = _clean_array_set(train_images, train_labels, val_indices, "fashion-mnist train")
    test = _clean_array_set(test_images, test_labels, test_indices, "fashion-mnist test")
    return train, val, test


def _clean_array_set(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, source: str) -> ArrayImageSet:
    chosen = labels[indices]
    return ArrayImageSet(images[indices], chosen, chosen, indices, source)
