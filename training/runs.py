"""The run directory: what ``productrec train`` writes and ``evaluate``/``export`` read.

Layout::

    <run>/config.json        # the resolved TrainConfig plus the command line
    <run>/data.json          # label names, class counts n(k), data fingerprint, realised noise rate, skipped files
    <run>/metrics.jsonl      # one line per epoch
    <run>/curves.png         # loss, error and learning rate per epoch
    <run>/last.pt            # everything needed to resume (written every epoch)
    <run>/best.pt            # the weights with the lowest validation top-1 error
    <run>/test_metrics.json  # written by ``productrec evaluate``, read by ``productrec export``

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.contract.manifest import read_json, sha256_file
from app.contract.preprocess import PreprocessConfig
from training.config import ConfigError, ModelConfig, TrainConfig
from training.models import create_model

log = logging.getLogger("productrec.runs")

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
TEST_METRICS_FILE = "test_metrics.json"
POSTHOC_FILE = "posthoc.json"  # the class offsets fitted after training (--posthoc-offsets)


def preprocess_config(model: ModelConfig, in_chans: int) -> PreprocessConfig:
    """The shared preprocessing settings of a resolved model config (mean/std filled in)."""
    if model.mean is None or model.std is None:
        raise ValueError("the model config's mean/std are not resolved yet")
    return PreprocessConfig(
        input_size=model.input_size,
        in_chans=in_chans,
        mean=tuple(model.mean),
        std=tuple(model.std),
        interpolation=model.interpolation,
        tta_sizes=tuple(model.tta_sizes),
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never destroys the previous checkpoint."""
    staged = path.with_name(path.name + ".tmp")
    torch.save(state, staged)
    staged.replace(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``productrec train`` (weights-only deserialisation)."""
    if not path.is_file():
        raise ConfigError(f"{path.parent}: no {path.name} (is it a run directory of `productrec train`?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad files
        raise ConfigError(f"{path}: cannot read the checkpoint: {exc}") from exc


@dataclass
class TrainedRun:
    """A finished (or interrupted) run: its best model and everything the manifest needs."""

    run_dir: Path
    config: TrainConfig
    command: str
    data: dict[str, Any]  # data.json
    checkpoint: dict[str, Any]  # best.pt without the weights
    model: nn.Module

    @property
    def preprocess(self) -> PreprocessConfig:
        return preprocess_config(self.config.model, int(self.data["in_chans"]))

    @property
    def labels(self) -> list[str]:
        return list(self.data["label_names"])

    def test_metrics(self) -> dict[str, Any]:
        """``productrec evaluate``'s metrics for this best checkpoint, or {} if none match it."""
        path = self.run_dir / TEST_METRICS_FILE
        if not path.is_file():
            return {}
        metrics = read_json(path)
        if metrics.get("checkpoint_sha256") != sha256_file(self.run_dir / BEST_CHECKPOINT):
            log.warning("%s is from another best.pt; not used (run `productrec evaluate` again)", path)
            return {}
        return {key: value for key, value in metrics.items() if key != "checkpoint_sha256"}


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> TrainedRun:
    """Read a run directory and rebuild its best model (in eval mode on ``device``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} not found")
    checkpoint = load_checkpoint(run_dir / BEST_CHECKPOINT)
    saved = read_json(run_dir / CONFIG_FILE)
    data = read_json(run_dir / DATA_FILE)
    config = TrainConfig.from_dict(saved)
    model = create_model(config.model.model, len(data["label_names"]), int(data["in_chans"]), model_kwargs=config.model.model_kwargs)
    model.load_state_dict(checkpoint.pop("model"))
    return TrainedRun(run_dir, config, saved.get("command", ""), data, checkpoint, model.to(device).eval())
