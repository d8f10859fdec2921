"""Shared pytest fixtures: small real data, and a real trained model repository.

Data (no torch needed):

- ``fmnist_dir`` -> ``Path``: the Fashion-MNIST idx files (``/usr/share/datasets/fashion-mnist``, Debian
  package ``dataset-fashion-mnist``; ``PRODUCTREC_FMNIST_DIR`` overrides). Fails with a hint when missing.
- ``fmnist_small_config`` -> ``make(**overrides) -> DataConfig``: a small, fast Fashion-MNIST-LT
  configuration (``SMALL_FMNIST``: n_max 48, rho 10, 40% symmetric noise, 10 validation and 10 test
  images per class); keyword arguments override any ``DataConfig`` field.
- ``fmnist_test_images`` -> ``LabelledImages(images, labels, label_names)``: 40 official Fashion-MNIST
  test images (the first 4 of each class) as shot (the product on white) as 28x28 grayscale PNG
  ``bytes``, their int64 labels and the 10 class names.
- ``image_folder`` (function scope) -> ``Path``: an ImageFolder of generated RGB PNGs (3 classes of
  distinct stripe patterns: checker, horizontal, vertical; 12 images each, sizes 20x24 and 24x20), for tests
  independent of Fashion-MNIST. ``image_folder_factory`` -> ``make(root, per_class=12, seed=0) -> Path``
  writes one anywhere (for fixtures of wider scope).
- ``train_config`` -> ``make(data, output, **fields) -> TrainConfig``: a fast CPU configuration
  (1 epoch, batch 32, no workers, TTA sizes 28/32/36); keyword arguments override fields of any section
  by name (``model="test_resnet"``, ``epochs=2``, ``input_size=16``, ...).

Trained models (session scope, built once, about 30-60 s on 2 CPU cores; need the training extra):

- ``trained_runs`` -> ``dict[str, Path]``: run directories of ``resnet10t``, ``seresnet18`` and
  ``resnest14d`` (three timm families), each trained for one epoch with bsce on
  ``fmnist_small_config()`` through ``training.train.train`` (weak models: validation error near 0.8-0.9).
- ``trained_repository`` -> ``Path``: a model repository with those three members exported by
  ``training.export.export_run`` as ``<architecture>/1`` (ONNX + manifest, TTA sizes 28/32/36) and an
  ``ensemble.json`` naming all three with strategy ``vote``. Shared: copy it (``shutil.copytree``)
  before changing anything in it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from training.config import SECTIONS, DataConfig, TrainConfig

FMNIST_DIR = Path(os.environ.get("PRODUCTREC_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
SMALL_FMNIST: dict[str, Any] = {
    "max_per_class": 48,
    "imbalance_ratio": 10.0,
    "noise_rate": 0.4,
    "val_per_class": 10,
    "test_per_class": 10,
}
REPOSITORY_MEMBERS = ("resnet10t", "seresnet18", "resnest14d")
FAST_TRAINING: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "workers": 0,
    "device": "cpu",
    "tta_sizes": (28, 32, 36),
}


@dataclass(frozen=True)
class LabelledImages:
    images: list[bytes]  # encoded PNG
    labels: np.ndarray  # int64 class indices
    label_names: list[str]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not any(FMNIST_DIR.glob("t10k-images-idx3-ubyte*")):
        pytest.fail(f"Fashion-MNIST not found in {FMNIST_DIR}: apt-get install dataset-fashion-mnist (or set PRODUCTREC_FMNIST_DIR)")
    return FMNIST_DIR


@pytest.fixture(scope="session")
def fmnist_small_config(fmnist_dir: Path) -> Callable[..., DataConfig]:
    def make(**overrides: Any) -> DataConfig:
        return DataConfig(**{"fmnist_dir": str(fmnist_dir), **SMALL_FMNIST, **overrides})

    return make


@pytest.fixture(scope="session")
def fmnist_test_images(fmnist_dir: Path) -> LabelledImages:
    from training.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist_as_shot

    _, _, images, labels = load_fashion_mnist_as_shot(fmnist_dir)
    chosen = np.concatenate([np.flatnonzero(labels == k)[:4] for k in range(len(FASHION_MNIST_LABELS))])
    return LabelledImages(
        images=[png_bytes(Image.fromarray(images[index])) for index in chosen],
        labels=labels[chosen].astype(np.int64),
        label_names=list(FASHION_MNIST_LABELS),
    )


def stripe_image(kind: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An RGB image of class ``kind``: horizontal stripes, vertical stripes or a checkerboard, with noise."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    phase = int(rng.integers(0, 4))
    pattern = [(y + phase) // 3 % 2, (x + phase) // 3 % 2, ((x + phase) // 3 + (y + phase) // 3) % 2][kind]
    colour = rng.uniform(0.5, 1.0, size=3)
    pixels = pattern[..., None] * colour * 200 + rng.normal(0, 12, size=(height, width, 3)) + 30
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def write_image_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for kind, name in enumerate(("horizontal", "vertical", "checker")):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            size = (20, 24) if index % 2 else (24, 20)
            stripe_image(kind, size, rng).save(root / name / f"{index:02d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder_factory() -> Callable[..., Path]:
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


def make_train_config(data: DataConfig, output: Path, **fields: Any) -> TrainConfig:
    """A TrainConfig for fast CPU tests; ``fields`` override fields of any section by name."""
    values = {**FAST_TRAINING, **fields}
    sections = {"data": data}
    for name, section in SECTIONS.items():
        current = sections.get(name, section())
        own = {key: value for key, value in values.items() if key in current.__dataclass_fields__}
        sections[name] = replace(current, **own)
    unknown = set(values) - {key for section in sections.values() for key in section.__dataclass_fields__}
    if unknown:
        raise TypeError(f"unknown TrainConfig fields {sorted(unknown)}")
    config = TrainConfig(**sections)
    config.run.output = str(output)
    return config


@pytest.fixture(scope="session")
def train_config() -> Callable[..., TrainConfig]:
    return make_train_config


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, fmnist_small_config: Callable[..., DataConfig]) -> dict[str, Path]:
    pytest.importorskip("torch")
    from training.train import train

    root = tmp_path_factory.mktemp("runs")
    data = fmnist_small_config()
    return {model: train(make_train_config(data, root / model, model=model, loss="bsce")) for model in REPOSITORY_MEMBERS}


@pytest.fixture(scope="session")
def trained_repository(tmp_path_factory: pytest.TempPathFactory, trained_runs: dict[str, Path]) -> Path:
    from training.export import export_run

    repository = tmp_path_factory.mktemp("repository") / "models"
    for name, run_dir in trained_runs.items():
        export_run(run_dir, repository, name=name, version="1", ensemble=True, check_images=8)
    return repository
