"""The composed losses (training.losses) against values computed by hand with plain ``math``, and their hooks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, DataConfig, LossConfig, TrainConfig
from training.loss_registry import LOSS_PRESETS, resolve_start
from training.losses import alpha_loss, create_loss, effective_number_weights
from training.losses.parts import cdb_weights

LOGITS = [[2.0, 1.0, 0.1], [0.5, -1.0, 3.0], [0.0, 0.0, 0.0], [-2.0, 4.0, 1.0]]
TARGETS = [0, 2, 1, 0]
COUNTS = [30, 10, 5]  # N = 45
PRIOR = [30 / 45, 10 / 45, 5 / 45]


def log_softmax(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(value) for value in row))


def mean_ce(rows: list[list[float]], weights: list[float] | None = None, sample: list[float] | None = None) -> float:
    total = 0.0
    for i, (row, target) in enumerate(zip(rows, TARGETS)):
        weight = 1.0 if weights is None else weights[target]
        total += (1.0 if sample is None else sample[i]) * weight * -log_softmax(row, target)
    return total / len(TARGETS)


def value(loss: torch.nn.Module) -> float:
    return float(loss(torch.tensor(LOGITS), torch.tensor(TARGETS)))


def test_every_preset_builds_with_its_defaults_and_records_its_parts() -> None:
    for name, preset in LOSS_PRESETS.items():
        spec = LossConfig(loss=name).spec()
        assert spec.name == name and spec.params["parts"] == preset.parts
        assert math.isfinite(float(create_loss(name, COUNTS, **spec.params)(torch.tensor(LOGITS), torch.tensor(TARGETS))))


def test_logit_adjustment_adds_tau_log_prior() -> None:
    rows = [[z + math.log(p) for z, p in zip(row, PRIOR)] for row in LOGITS]
    assert value(create_loss("la", COUNTS)) == pytest.approx(mean_ce(rows), rel=1e-6)
    rows = [[z + 2 * math.log(p) for z, p in zip(row, PRIOR)] for row in LOGITS]
    assert value(create_loss("la", COUNTS, tau=2.0)) == pytest.approx(mean_ce(rows), rel=1e-6)


def test_ldam_subtracts_the_target_margin_and_defers_effective_number_weights() -> None:
    margins = [0.5 * (5 / 30) ** 0.25, 0.5 * (5 / 10) ** 0.25, 0.5]  # C/n^(1/4) with the smallest class at 0.5
    rows = [[z - (margins[k] if k == target else 0.0) for k, z in enumerate(row)] for row, target in zip(LOGITS, TARGETS)]
    loss = create_loss("ldam-drw", COUNTS)
    loss.set_epoch(7, 10)  # DRW at 0.8 × 10 = epoch 8
    assert value(loss) == pytest.approx(mean_ce(rows), rel=1e-6)
    raw = [(1 - 0.9999) / (1 - 0.9999**n) for n in COUNTS]
    weights = [w * 3 / sum(raw) for w in raw]
    assert effective_number_weights(COUNTS).tolist() == pytest.approx(weights, rel=1e-5)
    loss.set_epoch(8, 10)
    assert value(loss) == pytest.approx(mean_ce(rows, weights), rel=1e-5)


def test_vector_scaling_multiplies_and_adds() -> None:
    rows = [[z * (n / 30) ** 0.3 + math.log(p) for z, n, p in zip(row, COUNTS, PRIOR)] for row in LOGITS]
    assert value(create_loss("vs", COUNTS)) == pytest.approx(mean_ce(rows), rel=1e-6)


def test_logit_clip_bounds_the_norm_by_one_over_tau() -> None:
    bound = 1 / 1.5
    rows = []
    for row in LOGITS:
        norm = math.sqrt(sum(z * z for z in row))
        rows.append([z * bound / norm for z in row] if norm > bound else row)
    assert rows[2] == [0.0, 0.0, 0.0]  # a zero vector is left alone
    assert value(create_loss("logitclip")) == pytest.approx(mean_ce(rows), rel=1e-6)


def test_alpha_loss_values_and_limits() -> None:
    expected = sum(1.5 * (1 - math.exp(log_softmax(row, t)) ** (2 / 3)) for row, t in zip(LOGITS, TARGETS)) / 4
    assert value(create_loss("alpha")) == pytest.approx(expected, rel=1e-6)
    log_p = torch.log(torch.tensor([0.2, 0.9]))
    assert alpha_loss(log_p, 1.0).tolist() == pytest.approx((-log_p).tolist())  # α = 1: the log-loss
    assert alpha_loss(log_p, 1e6).tolist() == pytest.approx([0.8, 0.1], rel=1e-4)  # α → ∞: 1 - p
    assert alpha_loss(log_p, 0.5).tolist() == pytest.approx((1 / torch.tensor([0.2, 0.9]) - 1).tolist(), rel=1e-5)  # α = 1/2: 1/p - 1


def test_cdb_starts_uniform_then_weights_by_validation_difficulty() -> None:
    loss = create_loss("cdb", COUNTS)
    assert value(loss) == pytest.approx(mean_ce(LOGITS), rel=1e-6)
    assert loss.wants_class_accuracy()
    accuracy = [0.9, 0.5, 0.1]
    tau = 2 / (1 + math.exp(-(0.9 / (0.1 + 0.01) - 1)))
    raw = [(1 - a) ** tau for a in accuracy]
    weights = [w * 3 / sum(raw) for w in raw]
    loss.observe_class_accuracy(accuracy)
    assert value(loss) == pytest.approx(mean_ce(LOGITS, weights), rel=1e-5)
    assert cdb_weights(accuracy, 1.0).tolist() == pytest.approx([0.1 * 3 / 1.5, 0.5 * 3 / 1.5, 0.9 * 3 / 1.5], rel=1e-6)
    assert cdb_weights([1.0, 1.0, 1.0]).tolist() == [1.0, 1.0, 1.0]
    assert "class_weights" in loss.state_dict()  # checkpointed for --resume


def test_absgd_weights_samples_by_exp_loss_over_lambda_in_its_second_stage() -> None:
    loss = create_loss("absgd")
    loss.set_epoch(7, 10)
    assert value(loss) == pytest.approx(mean_ce(LOGITS), rel=1e-6)
    losses = [-log_softmax(row, t) for row, t in zip(LOGITS, TARGETS)]
    exps = [math.exp(ell / -1.0) for ell in losses]
    sample = [4 * e / sum(exps) for e in exps]  # B·softmax(ℓ/λ): mean 1
    loss.set_epoch(8, 10)
    assert value(loss) == pytest.approx(mean_ce(LOGITS, sample=sample), rel=1e-6)
    assert value(loss) < mean_ce(LOGITS)  # λ < 0 down-weights the high-loss (likely mislabelled) samples


def test_bsce_la_is_bsce_on_adjusted_logits() -> None:
    weights = [45 / 90, 45 / 30, 45 / 15]
    total = 0.0
    for row, target in zip(LOGITS, TARGETS):
        adjusted = [z + math.log(p) for z, p in zip(row, PRIOR)]
        log_p = log_softmax(adjusted, target)
        total += 0.4 * weights[target] * -log_p + 0.7 * -math.log(1e-4) * (1 - math.exp(log_p))
    assert value(create_loss("bsce-la", COUNTS)) == pytest.approx(total / 4, rel=1e-6)


def test_deferrals_resolve_epochs_and_shares() -> None:
    assert resolve_start(None, 10) == 0 and resolve_start(3, None) == 3 and resolve_start(0.8, 30) == 24
    for bad in (-1, 2.5):
        with pytest.raises(ValueError):
            resolve_start(bad, 10)
    with pytest.raises(ValueError, match="number of epochs"):
        resolve_start(0.5, None)


def test_loss_options_reach_the_spec_and_bad_keys_are_refused() -> None:
    assert LossConfig(loss="la", loss_params={"tau": 2.0}).spec().params["tau"] == 2.0
    assert LossConfig(loss="ldam-drw").spec().params["drw_epoch"] == 0.8  # the preset's default survives --drw-epoch's
    assert LossConfig(loss="ldam-drw", drw_epoch=5).spec().params["drw_epoch"] == 5
    assert LossConfig(loss="ldam-drw", loss_params={"drw_epoch": None}).spec().params["drw_epoch"] is None
    assert LossConfig(loss="bsce", alpha=0.1).spec().params["alpha"] == 0.1
    assert "alpha" not in LossConfig(loss="la", alpha=0.1).spec().params
    config = TrainConfig(data=DataConfig(), loss=LossConfig(loss="la", loss_params={"gamma": 1.0}))
    with pytest.raises(ConfigError, match="--loss-params: la takes tau=1.0"):
        config.validate()
    with pytest.raises(ValueError, match="made of"):
        create_loss("la", COUNTS, parts=LOSS_PRESETS["ce"].parts)


def test_cdb_training_updates_weights_and_logs_susceptibility(image_folder: Path, tmp_path: Path, train_config) -> None:
    """Through the trainer's hooks: CDB-W's weights move from uniform, and every epoch logs ζ."""
    import json

    from training.runs import LAST_CHECKPOINT, load_checkpoint
    from training.train import train

    options = {"model": "test_resnet", "input_size": 16, "tta_sizes": (16, 18, 20), "batch_size": 8}
    config = train_config(DataConfig(dataset=str(image_folder), val_per_class=4), tmp_path / "run", epochs=2, loss="cdb", **options)
    run_dir = train(config)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record["susceptibility"]) for record in records) and len(records) == 2
    weights = load_checkpoint(run_dir / LAST_CHECKPOINT)["loss"]["class_weights"]
    assert weights.shape == (3,) and float(weights.sum()) == pytest.approx(3.0, rel=1e-5)
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
