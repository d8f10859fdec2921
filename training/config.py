"""Run configuration: dataclasses that become CLI option groups and the saved ``config.json``.

Torch-free, so ``productrec --help`` works where only the serving extra is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_BENCHMARK = "fmnist-lt"


@dataclass
class DataConfig:
    """Which data to train on and, for the built-in benchmark, how to make it long-tailed and noisy."""

    dataset: str = field(
        default=FMNIST_BENCHMARK,
        metadata={"help": f"'{FMNIST_BENCHMARK}' (built-in benchmark), an ImageFolder directory or a CSV manifest (path,label)"},
    )
    val_dataset: str | None = field(
        default=None,
        metadata={"help": "validation ImageFolder/CSV for user datasets (default: a stratified split of --dataset)"},
    )
    test_dataset: str | None = field(default=None, metadata={"help": "test ImageFolder/CSV for user datasets"})
    fmnist_dir: str = field(default=DEFAULT_FMNIST_DIR, metadata={"help": "directory of the Fashion-MNIST idx(.gz) files"})
    imbalance_ratio: float = field(default=100.0, metadata={"help": "ρ = n_max / n_min of the long-tailed training split"})
    noise_rate: float = field(default=0.4, metadata={"help": "probability r that a training label is flipped"})
    noise_type: str = field(
        default="symmetric",
        metadata={"help": "symmetric (to a uniformly random other class) or asymmetric (to a fixed similar class)", "choices": ["symmetric", "asymmetric"]},
    )
    val_per_class: int = field(default=500, metadata={"help": "clean, balanced validation images held out per class"})
    max_per_class: int | None = field(default=None, metadata={"help": "n_max of the long tail (default: all that remain after the validation hold-out)"})
    test_per_class: int | None = field(default=None, metadata={"help": "use only this many official test images per class (default: all 10,000)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the split, the long tail and the noise"})


@dataclass
class ModelConfig:
    """The backbone and its input."""

    model: str = field(default="resnet18", metadata={"help": "any timm model name"})
    pretrained: str | None = field(default=None, metadata={"help": "local checkpoint file to initialise from (never a hub)"})
    input_size: int = field(default=28, metadata={"help": "model input side in pixels"})
    tta_sizes: tuple[int, ...] = field(default=(28, 32, 36), metadata={"help": "resize sizes for multi-crop TTA; train-time crops are scaled within this range"})
    interpolation: str = field(default="bilinear", metadata={"help": "resize interpolation", "choices": ["nearest", "bilinear", "bicubic", "lanczos"]})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips in training"})


@dataclass
class LossConfig:
    """The loss: ce, bce, sce or bsce."""

    loss: str = field(default="bsce", metadata={"help": "loss function", "choices": ["ce", "bce", "sce", "bsce"]})
    alpha: float = field(default=0.4, metadata={"help": "weight α of the (balanced) CE term in sce/bsce"})
    beta: float = field(default=0.7, metadata={"help": "weight β of the RCE term in sce/bsce"})
    log_zero: float = field(default=math.log(1e-4), metadata={"help": "A = log 0 of the one-hot label in RCE (reference code: ln 1e-4; SCE paper: -4)"})
    drw_epoch: int | None = field(default=None, metadata={"help": "defer the class weights until this epoch (LDAM-DRW); off by default"})


@dataclass
class OptimConfig:
    """SGD with the learning rate divided by 10 on a validation plateau."""

    epochs: int = field(default=30, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    lr: float = field(default=0.01, metadata={"help": "initial learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    patience: int = field(default=3, metadata={"help": "epochs without a better validation top-1 error before lr x 0.1"})
    min_lr: float = field(default=1e-4, metadata={"help": "stop once the learning rate would fall below this"})


@dataclass
class RunConfig:
    """Where the run goes and what it runs on."""

    output: str = field(default="runs/default", metadata={"help": "run directory (config, metrics, checkpoints, plots)"})
    resume: bool = field(default=False, metadata={"help": "continue from the run directory's last checkpoint"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and augmentation"})
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA (ignored on the CPU)"})


@dataclass
class TrainConfig:
    """A whole training run; saved as the run's ``config.json`` and into the manifest."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**{name: _section(section, data.get(name, {})) for name, section in SECTIONS.items()})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


def _section(section: type, values: dict[str, Any]) -> Any:
    section_values = dict(values)
    for f in dataclasses.fields(section):
        if f.name in section_values and isinstance(section_values[f.name], list):
            section_values[f.name] = tuple(section_values[f.name])
    return section(**section_values)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, section: type, title: str | None = None) -> None:
    """One argument group per dataclass, one option per field, help from its metadata."""
    group = parser.add_argument_group(title or section.__name__.removesuffix("Config").lower(), section.__doc__)
    for f in dataclasses.fields(section):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f.metadata.get("help", "") + " (default: %(default)s)"}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs.update(nargs="+", type=int)
        else:
            kwargs["type"] = _scalar_type(f.type, default)
        group.add_argument(option_name(f.name), **kwargs)


def _scalar_type(annotation: Any, default: Any) -> type:
    if default is not None:
        return type(default)
    text = str(annotation)
    for candidate in (int, float, str):
        if candidate.__name__ in text:
            return candidate
    return str


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build a ``TrainConfig`` from parsed options; sections absent from the parser keep defaults."""
    values = vars(args)
    return TrainConfig(
        **{
            name: _section(section, {f.name: values[f.name] for f in dataclasses.fields(section) if f.name in values})
            for name, section in SECTIONS.items()
        }
    )
