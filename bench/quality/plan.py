"""The table's runs: settings (columns), losses, ensemble families, seeds, and the recipe they share."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from training.runs import BEST_CHECKPOINT, TEST_METRICS_FILE

LOSSES = ("ce", "bce", "sce", "bsce")
LOSS_PRIORITY = ("bsce", "ce", "bce", "sce")
MAIN = "sym40"
ENSEMBLE_LOSS = "bsce"
TIMING_FILE = "bench_timing.json"
EVALUATION_FILE = "evaluation.json"
ENSEMBLE_DIR = "ensemble"
PAPER = {"ce": 0.1530, "bce": 0.1430, "sce": 0.1492, "bsce": 0.1407, "bsce + multi-scale TTA": 0.1354}


@dataclass(frozen=True)
class Setting:
    """A column of the table: one way of corrupting the long-tailed training labels."""

    name: str
    title: str
    noise_rate: float
    noise_type: str = "symmetric"


SETTINGS = {
    setting.name: setting
    for setting in (
        Setting(MAIN, "ρ=100, 40% symmetric noise (main)", 0.4),
        Setting("asym40", "ρ=100, 40% class-dependent noise", 0.4, "asymmetric"),
        Setting("clean", "ρ=100, clean labels", 0.0),
    )
}


@dataclass(frozen=True)
class Family:
    """An ensemble member's architecture: a timm model narrowed by model kwargs."""

    name: str
    model: str
    kwargs: tuple[str, ...]


# Quarter-width ResNet-18 (0.7 M parameters) and its SE and split-attention (ResNeSt) relatives.
FAMILIES = (
    Family("resnet", "resnet18", ("channels=(16, 32, 64, 128)", "stem_width=16")),
    Family("seresnet", "seresnet18", ("channels=(16, 32, 64, 128)", "stem_width=16")),
    Family("resnest", "resnest14d", ("channels=(16, 32, 64, 128)", "stem_width=8")),
)


@dataclass(frozen=True)
class Spec:
    """One training run of the table."""

    setting: str
    loss: str
    seed: int
    family: Family = FAMILIES[0]

    def run_dir(self, root: Path) -> Path:
        if self.family != FAMILIES[0]:
            return root / ENSEMBLE_DIR / self.family.name / f"seed{self.seed}"
        return root / self.setting / self.loss / f"seed{self.seed}"

    @property
    def label(self) -> str:
        family = f"{self.family.name} " if self.family != FAMILIES[0] else ""
        return f"{family}{self.setting}/{self.loss}/seed{self.seed}"


@dataclass
class Recipe:
    """What every run shares (the options of ``productrec train`` besides setting, loss, seed and model)."""

    epochs: int
    lr: float
    patience: int
    min_lr: float
    batch_size: int
    max_per_class: int | None
    val_per_class: int
    test_per_class: int | None
    workers: int
    extra: list[str] = field(default_factory=list)

    def train_words(self, spec: Spec, output: Path) -> list[str]:
        setting = SETTINGS[spec.setting]
        words = [
            "--model", spec.family.model, "--model-kwargs", *spec.family.kwargs,
            "--loss", spec.loss, "--seed", str(spec.seed),
            "--noise-rate", str(setting.noise_rate), "--noise-type", setting.noise_type,
            "--epochs", str(self.epochs), "--lr", str(self.lr), "--patience", str(self.patience), "--min-lr", str(self.min_lr),
            "--batch-size", str(self.batch_size), "--val-per-class", str(self.val_per_class), "--workers", str(self.workers),
        ]
        if self.max_per_class:
            words += ["--max-per-class", str(self.max_per_class)]
        if self.test_per_class:
            words += ["--test-per-class", str(self.test_per_class)]
        return [*words, *self.extra, "--output", str(output)]


def plan(main_seeds: int, other_seeds: int) -> list[Spec]:
    """Runs in order of importance: the main setting's first seed, the ensemble, more seeds, then the other settings
    (both settings for one loss at a time, the paper's loss and the baseline first)."""
    first = [Spec(MAIN, loss, 0) for loss in LOSSES]
    members = [Spec(MAIN, ENSEMBLE_LOSS, 0, family) for family in FAMILIES[1:]]
    more_seeds = [Spec(MAIN, loss, seed) for seed in range(1, main_seeds) for loss in LOSSES]
    others = [
        Spec(name, loss, seed) for seed in range(other_seeds) for loss in LOSS_PRIORITY for name in SETTINGS if name != MAIN
    ]
    return first + members + more_seeds + others


def ensemble_members(root: Path) -> list[Path]:
    return [Spec(MAIN, ENSEMBLE_LOSS, 0, family).run_dir(root) for family in FAMILIES]


def is_finished(run_dir: Path) -> bool:
    """best.pt with the test_metrics.json of that very checkpoint."""
    from app.contract.manifest import read_json, sha256_file

    best, metrics = run_dir / BEST_CHECKPOINT, run_dir / TEST_METRICS_FILE
    if not (best.is_file() and metrics.is_file()):
        return False
    return read_json(metrics).get("checkpoint_sha256") == sha256_file(best)


def recipe_of(args: argparse.Namespace) -> Recipe:
    """The recipe given by the command line's options."""
    return Recipe(
        args.epochs, args.lr, args.patience, args.min_lr, args.batch_size, args.max_per_class or None,
        args.val_per_class, args.test_per_class or None, args.workers, list(args.extra),
    )
