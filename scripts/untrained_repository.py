"""Write a model repository of three untrained tiny timm models, for the container smoke test.

The members (a ResNet, an SE-ResNet and a ResNeSt, a few hundred thousand parameters each,
random weights) go through the real export path, ``training.export.export_to_repository``
with its ONNX parity check on real Fashion-MNIST test images, so the repository is exactly what
the service loads from a trained one; only the predictions carry no meaning.

Usage: .venv/bin/python scripts/untrained_repository.py OUT [--fmnist-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import timm
from PIL import Image

from app.manifest import LossSpec, ModelManifest
from app.preprocess import tta_crops
from training.data import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from training.export import export_to_repository, write_default_ensemble

INPUT_SIZE = 28
TTA_SIZES = [28, 32]
CHECK_IMAGES = 8
# One member per family, shrunk so that export and loading take seconds.
MEMBERS: dict[str, tuple[str, dict]] = {
    "resnet": ("test_resnet", {}),
    "seresnet": ("seresnet18", {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16}),
    "resnest": ("resnest14d", {"channels": (16, 32, 64, 128), "stem_width": 16}),
}
VERSION = "untrained"


def write_untrained_repository(out: Path, fmnist_dir: Path) -> None:
    """Export the three untrained members to ``out`` and name them in its ensemble file."""
    _, _, test_images, _ = load_fashion_mnist(fmnist_dir)
    manifests = {}
    for name, (architecture, _) in MEMBERS.items():
        manifests[name] = ModelManifest(
            name=name,
            version=VERSION,
            architecture=architecture,
            input_size=INPUT_SIZE,
            in_chans=1,
            mean=[FASHION_MNIST_MEAN],
            std=[FASHION_MNIST_STD],
            interpolation="bilinear",
            tta_sizes=TTA_SIZES,
            labels=list(FASHION_MNIST_LABELS),
            class_counts=[],
            loss=LossSpec(name="none"),
            sha256="",
            opset=0,
            training_command="untrained (random weights): scripts/untrained_repository.py",
        )
    config = next(iter(manifests.values())).preprocess
    check_batch = np.concatenate(
        [tta_crops(Image.fromarray(image), config, TTA_SIZES) for image in test_images[:CHECK_IMAGES]]
    )
    for name, (architecture, kwargs) in MEMBERS.items():
        model = timm.create_model(architecture, pretrained=False, num_classes=len(FASHION_MNIST_LABELS), in_chans=1, **kwargs)
        export_to_repository(model, manifests[name], out, check_batch)
    write_default_ensemble(out, [(name, VERSION) for name in MEMBERS], name="untrained-smoke")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="repository folder to write")
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_untrained_repository(args.out, args.fmnist_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
