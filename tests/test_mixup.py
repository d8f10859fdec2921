"""Mixup: the blend, the loss on both labels, and a run that trains and resumes exactly with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, DataConfig
from training.losses import create_loss
from training.mixup import MixedBatch, mix
from training.runs import CONFIG_FILE, LAST_CHECKPOINT, load_checkpoint
from training.train import train

from tests.test_train import TINY, metrics


def test_mix_blends_each_image_with_its_partner_by_lambda() -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(6, 1, 4, 4), torch.arange(6)
    mixed = mix(images, labels, alpha=1.0)
    assert 0.0 < mixed.lam < 1.0
    partners = mixed.partner_labels  # labels are their own indices here: the partner's position
    assert torch.allclose(mixed.images, mixed.lam * images + (1 - mixed.lam) * images[partners], atol=1e-6)
    assert torch.equal(mixed.labels, labels) and sorted(partners.tolist()) == labels.tolist()


def test_mix_off_returns_the_batch_and_the_plain_loss() -> None:
    images, labels = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    mixed = mix(images, labels, alpha=0.0)
    assert mixed.images is images and mixed.lam == 1.0
    loss = create_loss("bsce", [5, 3, 1])
    logits = torch.randn(4, 3)
    assert torch.equal(mixed.loss(loss, logits), loss(logits, labels))


def test_mixed_loss_is_the_lambda_weighted_loss_of_both_labels_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    batch = MixedBatch(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), torch.tensor([1, 0]), lam=0.25)
    ce = torch.nn.functional.cross_entropy
    # ℓ(y_i): -log softmax at the label: log(1 + e^-2) and log(1 + e^-1); ℓ(y_j): log(1 + e^2) and log(1 + e^1)
    own = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 2
    partner = (torch.log1p(torch.exp(torch.tensor(2.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert batch.loss(ce, logits).item() == pytest.approx((0.25 * own + 0.75 * partner).item(), rel=1e-6)


def test_a_mixup_run_records_it_and_resumes_exactly(image_folder: Path, tmp_path: Path, train_config) -> None:
    data = DataConfig(dataset=str(image_folder), val_per_class=4)
    options = {**{k: v for k, v in TINY.items() if k != "val_per_class"}, "mixup": 1.0}
    straight = train(train_config(data, tmp_path / "straight", epochs=2, **options))
    plain = train(train_config(data, tmp_path / "plain", epochs=2, **{**options, "mixup": 0.0}))
    interrupted = train(train_config(data, tmp_path / "resumed", epochs=1, **options))
    resumed = train(train_config(data, interrupted, epochs=2, resume=True, **options))

    saved = json.loads((straight / CONFIG_FILE).read_text())
    assert saved["model"]["mixup"] == 1.0 and "--mixup 1.0" in saved["command"]
    assert [r["train_loss"] for r in metrics(straight)] != pytest.approx([r["train_loss"] for r in metrics(plain)], rel=1e-3)
    assert [r["train_loss"] for r in metrics(straight)] == pytest.approx([r["train_loss"] for r in metrics(resumed)], rel=1e-5)
    for key, tensor in load_checkpoint(straight / LAST_CHECKPOINT)["model"].items():
        assert torch.allclose(tensor.float(), load_checkpoint(resumed / LAST_CHECKPOINT)["model"][key].float(), atol=1e-5), key


def test_negative_mixup_is_refused(tmp_path: Path, train_config, fmnist_small_config) -> None:
    with pytest.raises(ConfigError, match="--mixup"):
        train_config(fmnist_small_config(), tmp_path / "run", mixup=-0.5).validate()
