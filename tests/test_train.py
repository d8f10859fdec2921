"""Training: the plateau schedule, data plumbing, resume, pretrained weights and real runs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from app.contract.preprocess import PreprocessConfig, random_scaled_crop, tta_crops
from training.config import ConfigError, DataConfig
from training.benchmark import long_tail_counts
from training.data import build_splits
from training.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from training.models import create_model
from training.runs import BEST_CHECKPOINT, CONFIG_FILE, CURVES_FILE, DATA_FILE, LAST_CHECKPOINT, METRICS_FILE, load_checkpoint
from training.loaders import EpochSampler, Skipped, TorchImageSet, collate
from training.epoch import ErrorCount
from training.train import PlateauSchedule, TrainingRun, train

TINY = {"model": "test_resnet", "input_size": 16, "tta_sizes": (16, 18, 20), "batch_size": 8, "val_per_class": 4}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


# --------------------------------------------------------------------------- schedule


def test_plateau_schedule_divides_lr_by_ten_after_patience_epochs_and_stops_below_min_lr() -> None:
    schedule = PlateauSchedule(lr=0.01, patience=2, min_lr=1e-4)
    val_errors = [0.50, 0.40, 0.45, 0.41, 0.42, 0.39, 0.50, 0.50, 0.60, 0.60]
    lrs, bests = [], []
    for error in val_errors:
        lrs.append(schedule.lr)
        bests.append(schedule.step(error))
        if schedule.finished:
            break
    assert bests == [True, True, False, False, False, True, False, False, False, False]
    assert lrs == pytest.approx([0.01] * 4 + [0.001] * 4 + [1e-4] * 2)  # lowered after epochs 4 and 8
    assert schedule.finished and schedule.lr == pytest.approx(1e-5)
    assert schedule.best == 0.39


def test_plateau_schedule_reaches_min_lr_exactly_despite_rounding() -> None:
    schedule = PlateauSchedule(lr=0.01, patience=1, min_lr=1e-4)
    schedule.step(0.5)
    schedule.step(0.5)
    schedule.step(0.5)
    assert schedule.lr == pytest.approx(1e-4) and not schedule.finished  # 1.0000000000000002e-04 is min_lr
    schedule.step(0.5)
    assert schedule.finished


def test_plateau_schedule_state_round_trips() -> None:
    schedule = PlateauSchedule(lr=0.1, patience=3, min_lr=1e-3)
    for error in (0.3, 0.4, 0.5):
        schedule.step(error)
    restored = PlateauSchedule(lr=1.0, patience=1, min_lr=1.0)
    restored.load_state_dict(schedule.state_dict())
    assert restored == schedule


def test_training_applies_the_schedule_and_stops_below_min_lr(image_folder: Path, tmp_path: Path, train_config, monkeypatch) -> None:
    """With a validation error that never improves, lr goes 0.01 -> 0.001 and training stops before 10 epochs."""
    monkeypatch.setattr("training.train.top1_error", lambda *args, **kwargs: ErrorCount(1, 2))
    options = {k: v for k, v in TINY.items() if k != "val_per_class"}
    config = train_config(DataConfig(dataset=str(image_folder), val_per_class=4), tmp_path / "run", epochs=10, lr=0.01, patience=1, min_lr=1e-3, **options)
    run_dir = train(config)
    assert [record["lr"] for record in metrics(run_dir)] == pytest.approx([0.01, 0.01, 0.001])
    last = load_checkpoint(run_dir / LAST_CHECKPOINT)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert last["schedule"]["lr"] == pytest.approx(1e-4) and load_checkpoint(run_dir / BEST_CHECKPOINT)["epoch"] == 1


# --------------------------------------------------------------------------- data plumbing


def test_epoch_sampler_reshuffles_per_epoch_reproducibly() -> None:
    sampler = EpochSampler(50, seed=3, shuffle=True)
    first = list(sampler)
    assert sorted(index for _, index in first) == list(range(50)) and {epoch for epoch, _ in first} == {0}
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert [index for _, index in second] != [index for _, index in first]
    assert [(e, i) for e, i in EpochSampler(5, seed=3, shuffle=False)] == [(0, i) for i in range(5)]


def test_torch_image_set_uses_the_shared_preprocessing(fmnist_small_config) -> None:
    splits = build_splits(fmnist_small_config())
    preprocess = PreprocessConfig(28, 1, (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,), "bilinear", (28, 32, 36))
    train_set = TorchImageSet(splits.train, preprocess, augment=True, flip=True, seed=7)
    pixels, label = train_set[(2, 5)]
    expected = random_scaled_crop(splits.train.load(5), preprocess, np.random.default_rng((7, 2, 5)), True)
    assert np.array_equal(pixels.numpy(), expected) and label == splits.train.labels[5]
    assert torch.equal(train_set[(2, 5)][0], pixels)  # the same crop for the same (epoch, index)
    assert not torch.equal(train_set[(3, 5)][0], pixels)
    val_pixels, _ = TorchImageSet(splits.val, preprocess, augment=False)[(0, 3)]
    assert np.array_equal(val_pixels.numpy(), tta_crops(splits.val.load(3), preprocess, (28,))[0])


def test_collate_leaves_out_unreadable_samples() -> None:
    batch = collate([(torch.zeros(1, 4, 4), 1), Skipped("a.png: broken"), (torch.ones(1, 4, 4), 2)])
    assert batch.images.shape == (2, 1, 4, 4) and batch.labels.tolist() == [1, 2] and batch.skipped == ["a.png: broken"]
    empty = collate([Skipped("b.png: broken")])
    assert empty.images is None and empty.skipped == ["b.png: broken"]


# --------------------------------------------------------------------------- runs on generated images


def test_training_on_an_image_folder_learns_and_writes_the_run(image_folder: Path, tmp_path: Path, train_config) -> None:
    broken = image_folder / "vertical" / "99.png"
    broken.write_bytes((image_folder / "vertical" / "00.png").read_bytes()[:120])  # header intact, pixels cut
    config = train_config(DataConfig(dataset=str(image_folder), val_per_class=4), tmp_path / "run", epochs=2, workers=1, **{k: v for k, v in TINY.items() if k != "val_per_class"})
    run_dir = train(config)

    records = metrics(run_dir)
    assert [record["epoch"] for record in records] == [1, 2]
    assert set(records[0]) >= {"epoch", "train_loss", "train_error", "val_error", "lr", "seconds"}
    assert min(record["val_error"] for record in records) < 0.5  # chance is 2/3
    for name in (CONFIG_FILE, DATA_FILE, CURVES_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    assert saved["command"].startswith("productrec train --dataset ")
    pretrained_cfg = timm.create_model("test_resnet").pretrained_cfg
    assert saved["model"]["mean"] == pytest.approx(list(pretrained_cfg["mean"]))  # user RGB data: the model's own statistics
    assert saved["model"]["std"] == pytest.approx(list(pretrained_cfg["std"]))
    data = json.loads((run_dir / DATA_FILE).read_text())
    assert data["label_names"] == ["checker", "horizontal", "vertical"] and data["in_chans"] == 3
    assert sum(data["class_counts"]) == data["sizes"]["train"]
    assert any(str(broken) in reason for reason in data["skipped_while_training"])  # reported, not fatal
    best = load_checkpoint(run_dir / BEST_CHECKPOINT)
    assert best["val_error"] == min(record["val_error"] for record in records)


def test_resume_continues_exactly_where_the_run_stopped(image_folder: Path, tmp_path: Path, train_config) -> None:
    data = DataConfig(dataset=str(image_folder), val_per_class=4)
    options = {k: v for k, v in TINY.items() if k != "val_per_class"}
    straight = train(train_config(data, tmp_path / "straight", epochs=2, **options))
    interrupted = train(train_config(data, tmp_path / "resumed", epochs=1, **options))
    with pytest.raises(ConfigError, match="--resume"):
        train(train_config(data, interrupted, epochs=2, **options))
    resumed = train(train_config(data, interrupted, epochs=2, resume=True, **options))

    assert [record["epoch"] for record in metrics(resumed)] == [1, 2]
    straight_state, resumed_state = (load_checkpoint(run / LAST_CHECKPOINT) for run in (straight, resumed))
    assert resumed_state["epoch"] == 2
    for key, tensor in straight_state["model"].items():
        assert torch.allclose(tensor.float(), resumed_state["model"][key].float(), atol=1e-5), key
    assert [r["train_loss"] for r in metrics(straight)] == pytest.approx([r["train_loss"] for r in metrics(resumed)], rel=1e-5)


def test_resume_refuses_another_model_or_a_missing_checkpoint(image_folder: Path, tmp_path: Path, train_config) -> None:
    data = DataConfig(dataset=str(image_folder), val_per_class=4)
    options = {k: v for k, v in TINY.items() if k not in ("val_per_class", "model")}
    with pytest.raises(ConfigError, match="no last.pt"):
        TrainingRun(train_config(data, tmp_path / "nothing", resume=True, model="test_resnet", **options))
    run_dir = train(train_config(data, tmp_path / "run", model="test_resnet", **options))
    with pytest.raises(ConfigError, match="architecture"):
        TrainingRun(train_config(data, run_dir, resume=True, epochs=2, model="test_efficientnet", **options))


# --------------------------------------------------------------------------- models


def test_pretrained_weights_load_locally_dropping_a_classifier_of_another_shape(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=7, in_chans=3)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = create_model("test_resnet", num_classes=3, in_chans=1, pretrained=path)
    own, theirs = model.state_dict(), source.state_dict()
    first_conv = model.pretrained_cfg["first_conv"] + ".weight"
    assert own[first_conv].shape[1] == 1
    assert torch.allclose(own[first_conv], theirs[first_conv].sum(dim=1, keepdim=True))  # timm's RGB -> gray adaptation
    shared = [key for key in own if not key.startswith("fc.") and key != first_conv and own[key].dtype.is_floating_point]
    assert shared and all(torch.equal(own[key], theirs[key]) for key in shared)
    assert own["fc.weight"].shape[0] == 3


def test_pretrained_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        create_model("test_resnet", 3, 3, pretrained=tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save(timm.create_model("test_efficientnet", num_classes=3).state_dict(), other)
    with pytest.raises(ConfigError, match="not weights of this architecture|shapes differ"):
        create_model("test_resnet", 3, 3, pretrained=other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        create_model("test_resnet", 3, 3, pretrained=garbage)


def test_unknown_model_names_suggest_close_ones() -> None:
    with pytest.raises(ConfigError, match="resnet10t"):
        create_model("resnet10x", 3, 3)


# --------------------------------------------------------------------------- Fashion-MNIST-LT


def test_fashion_mnist_lt_runs_record_their_data(trained_runs: dict[str, Path], fmnist_small_config) -> None:
    config = fmnist_small_config()
    splits = build_splits(config)
    for name, run_dir in trained_runs.items():
        data = json.loads((run_dir / DATA_FILE).read_text())
        assert data["class_counts"] == splits.class_counts.tolist()  # n(k) of the (noisy) training labels
        assert sum(data["class_counts"]) == long_tail_counts(config.max_per_class, 10, config.imbalance_ratio).sum()
        assert data["in_chans"] == 1 and 0.3 < data["noise_rate_realised"] < 0.5
        assert data["mean"] == [FASHION_MNIST_MEAN] and data["std"] == [FASHION_MNIST_STD]
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        assert saved["model"]["model"] == name and saved["loss"]["loss"] == "bsce"
        assert len(metrics(run_dir)) == 1
        assert load_checkpoint(run_dir / BEST_CHECKPOINT)["data_fingerprint"] == data["fingerprint"]


# --------------------------------------------------------------------------- model kwargs


def test_model_kwargs_are_parsed_saved_and_build_a_narrow_model(tmp_path: Path) -> None:
    from app.cli import build_parser
    from training.config import TrainConfig, command_line, config_from_args

    words = ["train", "--model", "resnet18", "--model-kwargs", "channels=(8,16,32,64)", "stem_width=8", "stem_type=deep"]
    config = config_from_args(build_parser().parse_args(words))
    assert config.model.model_kwargs == {"channels": (8, 16, 32, 64), "stem_width": 8, "stem_type": "deep"}
    replayed = shlex.split(command_line(config))[1:]  # the saved command reproduces the kwargs
    assert config_from_args(build_parser().parse_args(replayed)).model.model_kwargs == config.model.model_kwargs

    config.save(tmp_path / "config.json")  # JSON turns the tuple into a list; timm must still accept it
    saved = TrainConfig.load(tmp_path / "config.json").model.model_kwargs
    model = create_model("resnet18", num_classes=3, in_chans=1, model_kwargs=saved)
    assert model.get_classifier().in_features == 64
    assert model.conv1[0].out_channels == 8  # the deep stem's first convolution
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(ConfigError, match="not accepted by resnet18"):
        create_model("resnet18", num_classes=3, in_chans=1, model_kwargs={"no_such_option": 1})


def test_model_kwargs_need_key_value_words(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--model-kwargs", "channels"])
    assert exit_info.value.code == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
