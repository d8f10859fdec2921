"""The benchmark's model repositories (untrained, through the real export) and its product photos."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from app.contract.manifest import ENSEMBLE_FILE
from app.contract.preprocess import PreprocessConfig
from bench import REPO
from bench.serving.cases import CASES
from training.fashion_mnist import load_fashion_mnist_as_shot

REALISTIC_ARCHITECTURE = "resnet50"
REALISTIC_MEMBERS = 3
REALISTIC_CLASSES = 50_000
REALISTIC_INPUT = 224
REALISTIC_TTA = (256, 272, 288, 304, 320)
BUILD_MARKER = "bench-build.json"


def _build_spec(case: str) -> dict:
    if case == "small":
        return {"script": "scripts/untrained_repository.py"}
    return {
        "architecture": REALISTIC_ARCHITECTURE,
        "members": REALISTIC_MEMBERS,
        "classes": REALISTIC_CLASSES,
        "input_size": REALISTIC_INPUT,
        "tta_sizes": list(REALISTIC_TTA),
    }


def ensure_repository(case: str, cache: Path, fmnist_dir: Path) -> Path:
    """The case's model repository under ``cache``, built (untrained, through the real export) if missing."""
    repository = cache / case
    spec = _build_spec(case)
    marker = repository / BUILD_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec and (repository / ENSEMBLE_FILE).is_file():
        return repository
    if repository.exists():
        shutil.rmtree(repository)  # our own cache entry, from an older spec or an interrupted build
    tqdm.write(f"building the {case} repository in {repository} (once; cached)")
    if case == "small":
        subprocess.run(
            [sys.executable, str(REPO / spec["script"]), str(repository), "--fmnist-dir", str(fmnist_dir)],
            check=True,
            cwd=REPO,
        )
    else:
        _build_realistic(repository, fmnist_dir)
    marker.write_text(json.dumps(spec))
    return repository


def _build_realistic(repository: Path, fmnist_dir: Path) -> None:
    """Three untrained ResNet-50s with a 50,000-class head, exported with the ONNX parity check."""
    import timm
    import torch

    from training.export import UNTRAINED_VERSION, export_untrained, write_default_ensemble

    labels = [f"product-{index:05d}" for index in range(REALISTIC_CLASSES)]
    names = [f"{REALISTIC_ARCHITECTURE}-{member}" for member in range(REALISTIC_MEMBERS)]
    photos = [Image.open(io.BytesIO(data)) for data in product_photos(fmnist_dir, 2, CASES["realistic"].photo_size)]
    for member, name in enumerate(tqdm(names, desc="export ResNet-50 x 50K classes", unit="member")):
        torch.manual_seed(member)
        model = timm.create_model(REALISTIC_ARCHITECTURE, pretrained=False, num_classes=REALISTIC_CLASSES)
        pretrained = model.pretrained_cfg
        preprocess = PreprocessConfig(
            input_size=REALISTIC_INPUT,
            in_chans=3,
            mean=tuple(pretrained["mean"]),
            std=tuple(pretrained["std"]),
            interpolation=pretrained.get("interpolation", "bilinear"),
            tta_sizes=REALISTIC_TTA,
        )
        export_untrained(
            model, repository, name, REALISTIC_ARCHITECTURE, preprocess, labels, photos, "python -m bench.serving"
        )
    write_default_ensemble(repository, [(name, UNTRAINED_VERSION) for name in names], name="realistic-untrained")


def product_photos(fmnist_dir: Path, count: int, size: int | None) -> list[bytes]:
    """Fashion-MNIST test images as shot, as JPEG files: 28x28 grayscale, or upscaled to ``size`` x ``size`` RGB."""
    _, _, test_images, _ = load_fashion_mnist_as_shot(fmnist_dir)
    photos = []
    for pixels in test_images[:count]:
        image = Image.fromarray(pixels)
        if size is not None:
            image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos
