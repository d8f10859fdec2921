"""Option definitions of the training subcommands (torch-free; implementations load lazily)."""

from __future__ import annotations

import argparse

from app.cli import Command
from training.config import SECTIONS, DataConfig, add_dataclass_arguments


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, DataConfig)
    parser.add_argument("--plot", metavar="PATH", help="also write the class histogram as a PNG to PATH")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    for section in SECTIONS.values():
        add_dataclass_arguments(parser, section)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories of `productrec train` (their best.pt); several make an ensemble (default: none, give --repository)")
    parser.add_argument("--repository", metavar="DIR", help="evaluate an exported model repository (its ensemble.json) with the service's engine instead")
    parser.add_argument("--out", metavar="PATH", help="metrics JSON (default: evaluation.json in the first run directory; none for --repository)")
    parser.add_argument("--plot", metavar="PATH", help="per-class accuracy against training count, PNG (default: next to --out)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per model run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for run directories: where PyTorch runs")
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"], help="for --repository: onnxruntime's execution provider")
    parser.add_argument("--fmnist-dir", metavar="DIR", help="where the Fashion-MNIST files are now, if not where training read them")
    parser.add_argument("--test-dataset", metavar="PATH", help="test ImageFolder/CSV for user data sets (default: the one training named)")
    parser.add_argument("--test-per-class", type=int, metavar="N", help="the benchmark's official test images per class to use, 0 for all (default: as in training)")
    parser.add_argument("--choose-strategy", action="store_true",
                        help="with --repository: write the combination (vote or mean) with the lower validation error into its ensemble.json")
    parser.add_argument("--no-memorisation", dest="memorisation", action="store_false", help="skip the memorisation figure (predicting the flipped training labels) (default: computed when the data has clean labels)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of `productrec train`; its best.pt is exported")
    parser.add_argument("--repository", default="models", metavar="DIR", help="model repository to write into")
    parser.add_argument("--name", help="member name (default: the architecture)")
    parser.add_argument("--version", help="member version (default: one more than the highest integer version there)")
    parser.add_argument("--ensemble-member", action="store_true", help="add the member to the repository's ensemble.json (created if missing)")
    parser.add_argument("--check-images", type=int, default=32, help="real test images for the ONNX parity check (all TTA crops of each)")
    parser.add_argument("--keep-tta-sizes", action="store_true", help="ship the run's TTA sizes as trained (default: the set of them that is best on the validation split, never worse than the single crop)")


TRAINING_COMMANDS: list[Command] = [
    Command(
        "data",
        "build the data splits; print the class histogram, noise rate, validation rule and (user data) the catalogue report",
        add_data_arguments,
        "training.data:main",
    ),
    Command(
        "train",
        "train a timm classifier (BSCE by default) on the benchmark or an ImageFolder/CSV data set",
        add_train_arguments,
        "training.train:main",
        description="Train a timm classifier with SGD; lr x 0.1 when the validation top-1 error plateaus. "
        "Writes config.json, data.json, metrics.jsonl, curves.png, last.pt and best.pt into --output.",
    ),
    Command(
        "evaluate",
        "test top-1 error, per-class and head/middle/tail accuracy, memorisation, TTA and ensemble",
        add_evaluate_arguments,
        "training.evaluate:main",
        description="Evaluate run directories (PyTorch) or an exported repository (onnxruntime, the service's engine) "
        "on the test split: each TTA size, their average, and the top-1 vote of several members.",
    ),
    Command(
        "export",
        "export a run's best checkpoint to ONNX in the model repository, checked against PyTorch",
        add_export_arguments,
        "training.export:main",
    ),
]
