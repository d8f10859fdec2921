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

import timm
from PIL import Image

from app.contract.preprocess import PreprocessConfig
from training.fashion_mnist import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist_as_shot
from training.export import UNTRAINED_VERSION, export_untrained, write_default_ensemble

PREPROCESS = PreprocessConfig(
    input_size=28, in_chans=1, mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,), tta_sizes=(28, 32)
)
CHECK_IMAGES = 8
# One member per family, shrunk so that export and loading take seconds.
MEMBERS: dict[str, tuple[str, dict]] = {
    "resnet": ("test_resnet", {}),
    "seresnet": ("seresnet18", {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16}),
    "resnest": ("resnest14d", {"channels": (16, 32, 64, 128), "stem_width": 16}),
}


def write_untrained_repository(out: Path, fmnist_dir: Path) -> None:
    """Export the three untrained members to ``out`` and name them in its ensemble file."""
    _, _, test_images, _ = load_fashion_mnist_as_shot(fmnist_dir)
    check_images = [Image.fromarray(image) for image in test_images[:CHECK_IMAGES]]
    for name, (architecture, kwargs) in MEMBERS.items():
        model = timm.create_model(
            architecture, pretrained=False, num_classes=len(FASHION_MNIST_LABELS), in_chans=1, **kwargs
        )
        export_untrained(
            model, out, name, architecture, PREPROCESS, FASHION_MNIST_LABELS, check_images,
            made_by="scripts/untrained_repository.py",
        )
    write_default_ensemble(out, [(name, UNTRAINED_VERSION) for name in MEMBERS], name="untrained-smoke")


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
