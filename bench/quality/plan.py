"""The table's runs: settings (columns), losses (the registry's presets, rows), seeds, and the recipe they share."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from training.loss_registry import LOSS_PRESETS
from training.runs import BEST_CHECKPOINT, TEST_METRICS_FILE

POSTHOC = "+pla"  # a row's suffix: the preset with post-hoc logit adjustment fitted on validation (--posthoc-adjust)
OFFSETS = "+offsets"  # a row's last suffix: then class offsets fitted on validation (--posthoc-offsets)
POSTHOC_PRESETS = ("ce", "bce", "bsce", "bsce-la")
_BASE_ROWS = ("ce", "bce", "bsce", "bsce-la", "la", *(f"{preset}{POSTHOC}" for preset in POSTHOC_PRESETS))
LOSSES = (  # every row the table can have
    *LOSS_PRESETS, *(f"{preset}{POSTHOC}" for preset in POSTHOC_PRESETS), *(f"{row}{OFFSETS}" for row in _BASE_ROWS),
)
# The rows run by default: ce, the paper's balanced losses, logit adjustment, the same with post-hoc adjustment, and each of
# those with class offsets (the other presets' table at n_max = 200 is in docs/results.md; add them with --losses).
TABLE_ROWS = (*_BASE_ROWS, *(f"{row}{OFFSETS}" for row in _BASE_ROWS))
BASELINE = "ce"
MAIN = "sym40"
TIMING_FILE = "bench_timing.json"
EVALUATION_FILE = "evaluation.json"


def without_offsets(row: str) -> str:
    """The row an offsets row is fitted on (``bsce+pla+offsets`` -> ``bsce+pla``): the same training, seed for seed."""
    return row.removesuffix(OFFSETS)


def preset_of(row: str) -> str:
    """The loss preset of a row (``bsce-la+pla+offsets`` -> ``bsce-la``)."""
    return without_offsets(row).removesuffix(POSTHOC)


def row_words(row: str) -> list[str]:
    """The ``productrec train`` options that make a row."""
    return [
        "--loss", preset_of(row), *(["--posthoc-adjust"] if without_offsets(row).endswith(POSTHOC) else []),
        *(["--posthoc-offsets"] if row.endswith(OFFSETS) else []),
    ]


def row_summary(row: str) -> str:
    """What a row is, for the table."""
    summary = LOSS_PRESETS[preset_of(row)].summary
    if without_offsets(row).endswith(POSTHOC):
        summary += "; then z − τ·log π, τ fitted on validation"
    return summary + ("; then z + b, class offsets fitted on validation" if row.endswith(OFFSETS) else "")


@dataclass(frozen=True)
class Setting:
    """A column of the table: a long tail and a way of corrupting its training labels."""

    name: str
    title: str
    imbalance_ratio: float
    noise_rate: float
    noise_type: str = "symmetric"


SETTINGS = {
    setting.name: setting
    for setting in (
        Setting(MAIN, "ρ=100, 40% symmetric", 100, 0.4),
        Setting("asym40", "ρ=100, 40% class-dependent", 100, 0.4, "asymmetric"),
        Setting("sym20", "ρ=50, 20% symmetric", 50, 0.2),
        Setting("clean", "ρ=100, clean", 100, 0.0),
    )
}
NOISY_40 = (MAIN, "asym40")  # the recipe's bar: ≥ 15% relative below ce in both


@dataclass(frozen=True)
class Spec:
    """One training run of the table."""

    setting: str
    loss: str
    seed: int

    def run_dir(self, root: Path) -> Path:
        return root / self.setting / self.loss / f"seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.setting}/{self.loss}/seed{self.seed}"


@dataclass
class Recipe:
    """What every run shares (the options of ``productrec train`` besides setting, loss and seed)."""

    model: str
    model_kwargs: list[str]
    epochs: int
    lr: float
    patience: int
    min_lr: float
    batch_size: int
    max_per_class: int | None
    val_per_class: int
    test_per_class: int | None
    workers: int
    augment: bool
    input_size: int = 28
    extra: list[str] = field(default_factory=list)

    def train_words(self, spec: Spec, output: Path) -> list[str]:
        setting = SETTINGS[spec.setting]
        words = [
            "--model", self.model, "--model-kwargs", *self.model_kwargs,
            *row_words(spec.loss), "--seed", str(spec.seed), "--imbalance-ratio", str(setting.imbalance_ratio),
            "--noise-rate", str(setting.noise_rate), "--noise-type", setting.noise_type,
            "--epochs", str(self.epochs), "--lr", str(self.lr), "--patience", str(self.patience), "--min-lr", str(self.min_lr),
            "--batch-size", str(self.batch_size), "--val-per-class", str(self.val_per_class), "--workers", str(self.workers),
        ]
        if self.input_size != 28:
            words += ["--input-size", str(self.input_size)]
        if not self.augment:  # crops scaled within input..input and no flips: the plain image, so memorisation shows sooner
            words += ["--tta-sizes", str(self.input_size), "--no-hflip"]
        else:
            words += ["--tta-sizes", *(str(round(self.input_size * factor)) for factor in (1, 8 / 7, 9 / 7))]  # 28/32/36 at 28 px
        if self.max_per_class:
            words += ["--max-per-class", str(self.max_per_class)]
        if self.test_per_class:
            words += ["--test-per-class", str(self.test_per_class)]
        return [*words, *self.extra, "--output", str(output)]


def plan(seeds: int, losses: tuple[str, ...] = LOSSES, settings: tuple[str, ...] = tuple(SETTINGS)) -> list[Spec]:
    """Runs in order of importance: seed 0 of every cell (main setting first), then each further seed."""
    return [Spec(setting, loss, seed) for seed in range(seeds) for setting in settings for loss in losses]


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
        args.model, list(args.model_kwargs), args.epochs, args.lr, args.patience, args.min_lr, args.batch_size,
        args.max_per_class or None, args.val_per_class, args.test_per_class or None, args.workers, args.augment, args.input_size, list(args.extra),
    )
