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

REALISTIC_TTA = (256, 272, 288, 304, 320)
BUILD_MARKER = "bench-build.json"
# Untrained timm models exported through the real path: architecture, members, classes, input, TTA sizes.
UNTRAINED_SPECS = {
    "realistic": {"architecture": "resnet50", "members": 3, "classes": 50_000, "input_size": 224,
                  "tta_sizes": list(REALISTIC_TTA)},
    # the photo case (bench.serving.photo): one ResNet-18 on one size, and 3 of them on 5 TTA sizes
    "photo-plain": {"architecture": "resnet18", "members": 1, "classes": 1000, "input_size": 224, "tta_sizes": [256]},
    "photo-tta": {"architecture": "resnet18", "members": 3, "classes": 1000, "input_size": 224,
                  "tta_sizes": list(REALISTIC_TTA)},
}


def _build_spec(case: str) -> dict:
    if case == "small":
        return {"script": "scripts/untrained_repository.py"}
    return UNTRAINED_SPECS[case]


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
        check = product_photos(fmnist_dir, 2, CASES["realistic"].photo_size)
        build_untrained(repository, spec, [Image.open(io.BytesIO(data)) for data in check], f"{case}-untrained")
    marker.write_text(json.dumps(spec))
    return repository


def build_untrained(repository: Path, spec: dict, check_images: list[Image.Image], ensemble_name: str) -> None:
    """``spec["members"]`` untrained timm models, exported with the ONNX parity check on ``check_images``."""
    import timm
    import torch

    from training.export import UNTRAINED_VERSION, export_untrained, write_default_ensemble

    architecture = spec["architecture"]
    labels = [f"product-{index:05d}" for index in range(spec["classes"])]
    names = [f"{architecture}-{member}" for member in range(spec["members"])]
    for member, name in enumerate(tqdm(names, desc=f"export {architecture} x {spec['classes']} classes", unit="member")):
        torch.manual_seed(member)
        model = timm.create_model(architecture, pretrained=False, num_classes=spec["classes"])
        pretrained = model.pretrained_cfg
        preprocess = PreprocessConfig(
            input_size=spec["input_size"],
            in_chans=3,
            mean=tuple(pretrained["mean"]),
            std=tuple(pretrained["std"]),
            interpolation=pretrained.get("interpolation", "bilinear"),
            tta_sizes=tuple(spec["tta_sizes"]),
        )
        export_untrained(model, repository, name, architecture, preprocess, labels, check_images, "python -m bench.serving")
    write_default_ensemble(repository, [(name, UNTRAINED_VERSION) for name in names], name=ensemble_name)


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
