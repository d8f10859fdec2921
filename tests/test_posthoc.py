"""Post-hoc logit adjustment and class offsets: hand values of their parts, and training runs whose best.pt carries them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from training.posthoc import (
    MAX_OFFSET_LOGITS,
    TAU_GRID,
    AdjustedErrors,
    adjusted_state_dict,
    class_offsets,
    classifier_bias_key,
    fit_class_offsets,
    log_prior,
    offset_images,
    offset_state_dict,
)
from training.runs import BEST_CHECKPOINT, METRICS_FILE, POSTHOC_FILE, load_run


def test_log_prior_is_the_log_label_share_with_empty_classes_counted_once() -> None:
    assert log_prior([3, 1, 0]).tolist() == pytest.approx([math.log(3 / 5), math.log(1 / 5), math.log(1 / 5)])


def test_adjusted_errors_count_each_tau_and_choose_the_smallest_best() -> None:
    prior = log_prior([90, 10])  # log 0.9, log 0.1: a gap of ln 9 = 2.197
    errors = AdjustedErrors(prior, taus=(0.0, 0.5, 1.0, 2.0))
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # margins 1, 1, -1 for class 0
    errors.add(logits, torch.tensor([1, 0, 1]))
    # τ = 0: image 0 wrong. τ = 0.5 shifts class 1 by 1.099 > 1: image 0 right, image 1 wrong.
    assert errors.wrong == [1, 1, 1, 1]
    assert errors.best(errors.wrong) == (0.0, 1)
    errors.add(torch.tensor([[0.8, 0.0]]), torch.tensor([1]))  # right from τ = 0.5 (shift 1.099 > 0.8)
    assert errors.wrong == [2, 1, 1, 1]
    assert errors.best(errors.wrong) == (0.5, 1)
    assert TAU_GRID[0] == 0 and TAU_GRID[-1] == 4 and len(TAU_GRID) == 17


def test_the_adjustment_is_folded_into_the_classifier_bias_only() -> None:
    model = timm.create_model("resnet10t", num_classes=3, channels=(8, 8, 8, 8), stem_width=8)
    key = classifier_bias_key(model)
    assert key == "fc.bias"
    prior = log_prior([8, 1, 1])
    state = model.state_dict()
    adjusted = adjusted_state_dict(state, key, 1.5, prior)
    assert torch.allclose(adjusted[key], state[key] - 1.5 * prior)
    assert all(adjusted[name] is state[name] for name in state if name != key)
    assert adjusted_state_dict(state, key, 0.0, prior) is state
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    raw = model(images)
    model.load_state_dict(adjusted)
    assert torch.allclose(model(images), raw - 1.5 * prior, atol=1e-5)


def test_a_classifier_without_a_bias_is_refused() -> None:
    model = timm.create_model("resnet10t", num_classes=3, channels=(8, 8, 8, 8), stem_width=8)
    model.fc = nn.Linear(model.fc.in_features, 3, bias=False)
    with pytest.raises(ValueError, match="bias"):
        classifier_bias_key(model)


def test_training_with_posthoc_adjustment_selects_and_saves_the_adjusted_model(fmnist_small_config, tmp_path: Path, train_config) -> None:
    from training.train import train

    config = train_config(fmnist_small_config(), tmp_path / "run", loss="ce", posthoc_adjust=True, epochs=2)
    run_dir = train(config)
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert all(record["posthoc_tau"] in TAU_GRID for record in records)
    assert all(record["val_error"] <= record["val_error_unadjusted"] for record in records)  # τ = 0 is in the grid
    run = load_run(run_dir)
    best = min(records, key=lambda record: record["val_error"])
    assert run.checkpoint["posthoc_tau"] == best["posthoc_tau"] and run.checkpoint["val_error"] == best["val_error"]
    # best.pt's model predicts with the adjusted logits: its plain validation error is the adjusted one
    from training.data import build_splits
    from training.loaders import TorchImageSet, make_loader
    from training.runs import preprocess_config

    splits = build_splits(config.data)
    loader = make_loader(TorchImageSet(splits.val, preprocess_config(run.config.model, splits.in_chans), augment=False), 64, 0, 0, False, False)
    wrong = seen = 0
    with torch.inference_mode():
        for batch in loader:
            wrong += int((run.model(batch.images).argmax(1) != batch.labels).sum())
            seen += len(batch.labels)
    assert wrong / seen == pytest.approx(best["val_error"])
    assert np.isfinite(run.checkpoint["val_error"])


def shifted_logits(n: int, shift: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(z), then reported as z + shift: the offsets to find are −shift."""
    generator = torch.Generator().manual_seed(seed)
    clean = 2 * torch.randn(n, len(shift), generator=generator)
    labels = torch.multinomial(torch.softmax(clean, dim=1), 1, generator=generator).squeeze(1)
    return clean + torch.tensor(shift), labels


def test_fitted_offsets_undo_a_known_shift_of_the_logits() -> None:
    shift = [2.0, 0.5, -1.0, -1.5]
    logits, labels = shifted_logits(20000, shift)
    offsets = fit_class_offsets(logits, labels)
    expected = -torch.tensor(shift)
    # softmax ignores a common constant: compare centred; the prior pulls each offset towards 0 by a hair at this size
    assert torch.allclose(offsets - offsets.mean(), expected - expected.mean(), atol=0.08)


def test_offsets_are_kept_only_when_the_cross_fit_makes_fewer_mistakes() -> None:
    logits, labels = shifted_logits(4000, [3.0, 0.0, 0.0, -3.0])
    fit = class_offsets(logits, labels)
    assert fit.kept and fit.error_cross_fitted < fit.error_before and fit.val_error == fit.error_cross_fitted
    assert fit.images == 4000 and len(fit.offsets) == 4 and fit.offsets[0] < 0 < fit.offsets[3]
    perfect = class_offsets(logits, logits.argmax(dim=1))  # no mistake to remove: the logits stay as they are
    assert not perfect.kept and perfect.error_before == 0 and perfect.val_error == 0


def test_the_fit_uses_at_most_a_bounded_sample_and_needs_ten_images_a_class() -> None:
    assert offset_images(300, 10) == (300, "")
    assert offset_images(99, 10)[0] == 0 and "fewer than 10 a class" in offset_images(99, 10)[1]
    assert offset_images(10**7, 1000) == (MAX_OFFSET_LOGITS // 1000, "")  # a seeded sample where the split is too large
    used, why = offset_images(500_000, 50_000)  # 10 a class, but only 2,684 images fit under the cap
    assert used == 0 and "2684 validation images usable for 50000 classes" in why


def test_a_class_without_validation_images_gets_a_finite_offset() -> None:
    logits, labels = shifted_logits(500, [0.0, 0.0, 0.0])
    logits = torch.cat([logits, torch.zeros(len(labels), 1)], dim=1)  # a fourth class no image is labelled with
    offsets = fit_class_offsets(logits, labels)
    assert torch.isfinite(offsets).all() and offsets[3] < offsets[:3].min()


def test_offsets_are_folded_into_the_classifier_bias() -> None:
    model = timm.create_model("resnet10t", num_classes=3, channels=(8, 8, 8, 8), stem_width=8).eval()
    state = model.state_dict()
    folded = offset_state_dict(state, "fc.bias", [0.5, -1.0, 0.25])
    images = torch.randn(2, 3, 32, 32)
    raw = model(images)
    model.load_state_dict(folded)
    assert torch.allclose(model(images), raw + torch.tensor([0.5, -1.0, 0.25]), atol=1e-5)


def test_training_with_class_offsets_folds_them_once_and_records_them(fmnist_small_config, tmp_path: Path, train_config) -> None:
    from app.contract.manifest import sha256_file
    from training.train import train

    config = train_config(fmnist_small_config(), tmp_path / "run", loss="bce", posthoc_offsets=True, epochs=2)
    run_dir = train(config)
    record = json.loads((run_dir / POSTHOC_FILE).read_text())
    run = load_run(run_dir)
    assert run.checkpoint["val_error_before_offsets"] == pytest.approx(record["error_before"])
    assert run.checkpoint["val_error"] == pytest.approx(record["val_error"])
    assert run.checkpoint["posthoc_offsets"] == (record["offsets"] if record["kept"] else [])
    assert record["val_error"] <= record["error_before"] and record["images"] > 0
    # resuming the finished run fits nothing again: best.pt and the record stay as they are
    digest = sha256_file(run_dir / BEST_CHECKPOINT)
    train(dataclasses.replace(config, run=dataclasses.replace(config.run, resume=True)))
    assert sha256_file(run_dir / BEST_CHECKPOINT) == digest and json.loads((run_dir / POSTHOC_FILE).read_text()) == record
    command = json.loads((run_dir / "config.json").read_text())["command"]
    assert "--posthoc-offsets" in command and "--resume" not in command  # the command that reproduces the run from scratch
