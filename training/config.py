"""Run configuration: dataclasses that become CLI option groups and the saved ``config.json``.

Torch-free, so ``productrec --help`` works where only the serving extra is installed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from app.contract.manifest import LossSpec
from app.contract.preprocess import INTERPOLATIONS, tta_sizes_fit
from training.loss_registry import LOSS_PRESETS, SYMMETRIC, loss_preset

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_BENCHMARK = "fmnist-lt"
BENCHMARK_VAL_PER_CLASS = 500
# A class needs this many images to spare one for validation under --val-fraction; smaller ones train on all.
MIN_IMAGES_FOR_VALIDATION = 3


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
    val_per_class: int | None = field(
        default=None,
        metadata={
            "help": f"validation images per class: {FMNIST_BENCHMARK}'s clean, balanced hold-out (default {BENCHMARK_VAL_PER_CLASS}); "
            "for user data sets a fixed count (at most half of each class) that replaces --val-fraction"
        },
    )
    val_fraction: float = field(
        default=0.1,
        metadata={
            "help": "user data sets: the fraction of each class that goes to validation (stratified, seeded by --data-seed; "
            f"at least 1 image from each class of {MIN_IMAGES_FOR_VALIDATION} or more, none from smaller ones); "
            f"ignored with --val-per-class or --val-dataset and for {FMNIST_BENCHMARK}"
        },
    )
    max_per_class: int | None = field(default=None, metadata={"help": "n_max of the long tail (default: all that remain after the validation hold-out)"})
    test_per_class: int | None = field(default=None, metadata={"help": "use only this many official test images per class (default: all 10,000)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the split, the long tail and the noise"})


@dataclass
class ModelConfig:
    """The backbone and its input."""

    model: str = field(default="resnet18", metadata={"help": "any timm model name"})
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "extra timm.create_model arguments as KEY=VALUE (values read as Python literals), e.g. channels=(32,64,128,256)"},
    )
    pretrained: str | None = field(default=None, metadata={"help": "local checkpoint file to initialise from (never a hub)"})
    input_size: int = field(default=28, metadata={"help": "model input side in pixels"})
    tta_sizes: tuple[int, ...] = field(default=(28, 32, 36), metadata={"help": "resize sizes for multi-crop TTA; train-time crops are scaled within this range"})
    interpolation: str = field(default="bilinear", metadata={"help": "resize interpolation", "choices": list(INTERPOLATIONS)})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips in training"})
    mixup: float = field(
        default=0.0,
        metadata={"help": "mixup (Zhang et al. 2018): train on λ·x_i + (1−λ)·x_j with the loss λ·ℓ(y_i) + (1−λ)·ℓ(y_j), "
                  "λ ~ Beta(a, a) per batch, j a shuffle of the batch; a = this value (1: λ uniform), 0: off"},
    )
    mean: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "per-channel normalisation mean (default: Fashion-MNIST's for the benchmark, the model's pretrained (ImageNet) values otherwise)"},
    )
    std: tuple[float, ...] | None = field(default=None, metadata={"help": "per-channel normalisation std (default: as for --mean)"})


@dataclass
class LossConfig:
    """The loss (a preset of training.loss_registry) and its parameters."""

    loss: str = field(
        default="bsce",
        metadata={"help": "; ".join(f"{p.name}: {p.summary}" for p in LOSS_PRESETS.values()), "choices": list(LOSS_PRESETS)},
    )
    alpha: float = field(default=SYMMETRIC["alpha"], metadata={"help": "weight α of the (balanced) CE term of the losses with an RCE term"})
    beta: float = field(default=SYMMETRIC["beta"], metadata={"help": "weight β of the RCE term"})
    log_zero: float = field(default=SYMMETRIC["log_zero"], metadata={"help": "A = log 0 of the one-hot label in RCE (reference code: ln 1e-4; SCE paper: -4)"})
    drw_epoch: int | None = field(
        default=None,
        metadata={"help": "defer the class weights until this (0-based) epoch (DRW); default: the preset's (ldam-drw: the last fifth, else off)"},
    )
    posthoc_adjust: bool = field(
        default=False,
        metadata={"help": "post-hoc logit adjustment: predict with z − τ·log π (π: the training-label prior), τ in 0..4 chosen "
                  "each epoch on the validation split (its error then picks the best epoch); best.pt's classifier bias carries it"},
    )
    posthoc_offsets: bool = field(
        default=False,
        metadata={"help": "post-hoc class offsets: after training, predict with z + b, one offset per class fitted on the validation "
                  "split by penalised likelihood (Alexandari et al. 2020; needs 10 validation images a class), kept only if a "
                  "2-fold cross-fit on validation makes fewer mistakes; best.pt's classifier bias carries it, posthoc.json records it. --resume of a finished run fits it"},
    )
    loss_params: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "the preset's other parameters as KEY=VALUE (a deferral: an epoch, a share in (0, 1) of --epochs, or None); "
            "the presets' defaults: " + "; ".join(f"{p.name}: {p.defaults_text()}" for p in LOSS_PRESETS.values())
        },
    )

    def spec(self) -> LossSpec:
        """The parameters the chosen loss takes, from these options (the manifest's record; what training builds).

        --alpha/--beta/--log-zero/--drw-epoch apply where the preset takes them; --drw-epoch only when given
        (its default leaves the preset's), and --loss-params over both.
        """
        preset = loss_preset(self.loss)
        given = {name: getattr(self, name) for name in ("alpha", "beta", "log_zero") if name in preset.params}
        if self.drw_epoch is not None and "drw_epoch" in preset.params:
            given["drw_epoch"] = self.drw_epoch
        return preset.spec(**{**given, **self.loss_params})


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
    device: str = field(default="auto", metadata={"help": "where to train: cuda when available (auto), cpu or cuda", "choices": ["auto", "cpu", "cuda"]})
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA (ignored on the CPU)"})


LR_SCALING_RULES = ("none", "linear")


@dataclass
class DistributedConfig:
    """Data-parallel training over several processes (PyTorch DDP); torchrun-started runs read RANK/WORLD_SIZE/LOCAL_RANK."""

    nproc_per_node: int = field(
        default=1,
        metadata={"help": "training processes on this machine, launched through torch.distributed.run (nccl on CUDA, gloo on the CPU); "
                  "ignored when torchrun started this process"},
    )
    sync_bn: bool = field(default=False, metadata={"help": "synchronise BatchNorm statistics over the processes (SyncBatchNorm; CUDA only)"})
    lr_scaling: str = field(
        default="none",
        metadata={
            "help": "learning-rate rule for the effective batch (--batch-size x world size): none keeps --lr and --min-lr; "
            "linear multiplies both by the world size (Goyal et al. 2017)",
            "choices": list(LR_SCALING_RULES),
        },
    )


@dataclass
class TrainConfig:
    """A whole training run; saved as the run's ``config.json`` and into the manifest."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

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

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the option of the first value that cannot work."""
        model, optim = self.model, self.optim
        checks = [
            (model.input_size >= 8, "--input-size must be at least 8"),
            (bool(model.tta_sizes), "--tta-sizes needs at least one size"),
            (tta_sizes_fit(model.input_size, model.tta_sizes), "every --tta-sizes value must be >= --input-size (crops are centred, never padded)"),
            ((model.mean is None) == (model.std is None), "--mean and --std go together"),
            (model.std is None or all(value > 0 for value in model.std), "--std values must be > 0"),
            (model.mixup >= 0, "--mixup must be >= 0 (0: off)"),
            (optim.epochs >= 1, "--epochs must be >= 1"),
            (optim.batch_size >= 1, "--batch-size must be >= 1"),
            (optim.lr > 0, "--lr must be > 0"),
            (0 <= optim.momentum < 1, "--momentum must be in [0, 1)"),
            (optim.weight_decay >= 0, "--weight-decay must be >= 0"),
            (optim.patience >= 1, "--patience must be >= 1"),
            (0 < optim.min_lr <= optim.lr, "--min-lr must be in (0, --lr]"),
            (self.loss.alpha >= 0 and self.loss.beta >= 0, "--alpha and --beta must be >= 0"),
            (self.loss.log_zero < 0, "--log-zero (A = log 0) must be < 0"),
            (set(self.loss.loss_params) <= set(loss_preset(self.loss.loss).params),
             f"--loss-params: {self.loss.loss} takes {loss_preset(self.loss.loss).defaults_text()}, not {sorted(set(self.loss.loss_params) - set(loss_preset(self.loss.loss).params))}"),
            (self.run.workers >= 0, "--workers must be >= 0"),
            (self.distributed.nproc_per_node >= 1, "--nproc-per-node must be >= 1"),
            (0 <= self.data.noise_rate < 1, "--noise-rate must be in [0, 1)"),
            (self.data.imbalance_ratio >= 1, "--imbalance-ratio must be >= 1"),
            (0 < self.data.val_fraction < 1, "--val-fraction must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the option."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Report bad options and bad data (missing files, unusable data sets, broken repositories) as CLI errors.

    Wrap only the steps that read user input, so a bug deeper down keeps its traceback.
    """
    from app.cli import CommandError
    from app.contract.manifest import RepositoryError

    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError, RepositoryError) as exc:
        raise CommandError(str(exc)) from exc


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "run": RunConfig,
    "distributed": DistributedConfig,
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
        help_text = f.metadata.get("help", "")
        if default is not None and "(default" not in help_text:
            help_text += " (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, dict):
            kwargs.update(nargs="*", action=KeyValueAction, metavar="KEY=VALUE")
        elif str(f.type).startswith("tuple"):
            kwargs.update(nargs="+", type=float if "float" in str(f.type) else int)
        else:
            kwargs["type"] = _scalar_type(f.type, default)
        group.add_argument(option_name(f.name), **kwargs)


def parse_key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read by ``ast.literal_eval`` (a plain string when it is not a literal), as timm's ParseKwargs."""
    key, separator, value = text.partition("=")
    if not separator or not key.isidentifier():
        raise ValueError(f"{text!r} is not KEY=VALUE with a Python identifier as KEY")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


class KeyValueAction(argparse.Action):
    """Collects ``KEY=VALUE`` words into a dict (see ``parse_key_value``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, dict(parse_key_value(value) for value in values))
        except ValueError as exc:
            parser.error(f"{option_string}: {exc}")


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


def command_line(config: TrainConfig, subcommand: str = "train") -> str:
    """The ``productrec`` command that reproduces ``config``: options that differ from the defaults."""
    default = TrainConfig()
    words = ["productrec", subcommand]
    for name in SECTIONS:
        section, default_section = getattr(config, name), getattr(default, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if value == getattr(default_section, f.name):
                continue
            if isinstance(value, bool):
                words.append(option_name(f.name if value else "no_" + f.name))
            elif isinstance(value, tuple):
                words += [option_name(f.name), *map(str, value)]
            elif isinstance(value, dict):
                words += [option_name(f.name), *(f"{key}={item!r}" for key, item in value.items())]
            else:
                words += [option_name(f.name), str(value)]
    return shlex.join(words)
