"""Data-parallel training: rank shards, the learning-rate rule, 2 gloo processes through --nproc-per-node, torchrun's environment."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from app.cli import main as cli_main
from app.contract.preprocess import tta_crops
from app.engine.ensemble import Ensemble
from training.config import DataConfig, OptimConfig, TrainConfig
from training.data import build_splits
from training.distributed import BatchAndLr, RankInfo
from training.export import export_run
from training.loaders import EpochSampler, SkipLog, TorchImageSet, make_loader
from training.runs import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, load_checkpoint, load_run
from training.train import top1_error, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_OPTIONS = ["--model", "test_resnet", "--input-size", "16", "--tta-sizes", "16", "18", "20", "--batch-size", "8",
                "--lr", "0.05", "--workers", "0", "--device", "cpu"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def shard(sampler: EpochSampler) -> list[int]:
    return [index for _, index in sampler]


# --------------------------------------------------------------------------- sharding and the lr rule


def test_training_shards_are_equal_disjoint_up_to_padding_and_reshuffled_per_epoch() -> None:
    ranks = [EpochSampler(7, seed=3, shuffle=True, rank=rank, world_size=2) for rank in (0, 1)]
    first = [shard(sampler) for sampler in ranks]
    assert [len(indices) for indices in first] == [4, 4] == [len(sampler) for sampler in ranks]
    order = shard(EpochSampler(7, seed=3, shuffle=True))  # the single-process order, dealt out in turn
    padded = order + order[:1]
    assert first == [padded[0::2], padded[1::2]]
    assert sorted(first[0] + first[1]) == sorted(list(range(7)) + order[:1])  # one index repeated to even out
    assert [shard(sampler) for sampler in ranks] == first  # deterministic
    for sampler in ranks:
        sampler.set_epoch(1)
    assert [shard(sampler) for sampler in ranks] != first


def test_evaluation_shards_partition_the_split_without_padding() -> None:
    shards = [shard(EpochSampler(5, seed=0, shuffle=False, rank=rank, world_size=3)) for rank in range(3)]
    assert shards == [[0, 3], [1, 4], [2]]
    assert [len(EpochSampler(5, 0, False, rank, 3)) for rank in range(3)] == [2, 2, 1]
    assert shard(EpochSampler(1, 0, False, rank=1, world_size=2)) == []  # a rank may get nothing to evaluate
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(5, 0, False, rank=2, world_size=2)


def test_lr_scaling_rule_and_effective_batch() -> None:
    optim = OptimConfig(batch_size=32, lr=0.01, min_lr=1e-4)
    world = RankInfo(torch.device("cpu"), rank=1, world_size=4, backend="gloo")
    linear, none = BatchAndLr.resolve(optim, "linear", world), BatchAndLr.resolve(optim, "none", world)
    assert linear.effective_batch_size == none.effective_batch_size == 128
    assert (linear.lr, linear.min_lr) == pytest.approx((0.04, 4e-4)) and (none.lr, none.min_lr) == (0.01, 1e-4)
    assert BatchAndLr.resolve(optim, "linear", RankInfo(torch.device("cpu"))).lr == 0.01


def test_sync_bn_on_the_cpu_is_refused_before_launching(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", *TINY_OPTIONS, "--nproc-per-node", "2", "--sync-bn", "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--sync-bn needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 2 processes on gloo


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, image_folder_factory) -> tuple[Path, DataConfig]:
    """1 epoch in 2 processes, then --resume to 2 epochs in 2 processes (9 validation images: shards of 5 and 4)."""
    root = tmp_path_factory.mktemp("ddp")
    images = image_folder_factory(root / "images", per_class=11)
    run_dir = root / "run"
    words = ["train", "--dataset", str(images), "--val-per-class", "3", *TINY_OPTIONS, "--nproc-per-node", "2", "--output", str(run_dir)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO_ROOT))  # the workers import this checkout's packages
        assert cli_main([*words, "--epochs", "1"]) == 0
        assert cli_main([*words, "--epochs", "2", "--resume"]) == 0
    return run_dir, DataConfig(dataset=str(images), val_per_class=3)


def test_ddp_run_records_its_world_and_resumes(ddp_run: tuple[Path, DataConfig]) -> None:
    run_dir, data = ddp_run
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    assert saved["world"] == {
        "world_size": 2, "backend": "gloo", "batch_size_per_process": 8, "effective_batch_size": 16,
        "lr_scaling": "none", "lr": 0.05, "min_lr": 1e-4,
    }
    assert saved["distributed"]["nproc_per_node"] == 2 and "--nproc-per-node 2" in saved["command"]
    splits = build_splits(data)
    records = metrics(run_dir)
    assert [record["epoch"] for record in records] == [1, 2]  # the resumed run kept epoch 1 and added epoch 2
    assert all(record["val_samples"] == len(splits.val) == 9 for record in records)  # both shards counted
    assert all(record["train_samples"] == 16 for record in records)  # 24 images: 12 per rank, one full batch of 8 each
    last = load_checkpoint(run_dir / LAST_CHECKPOINT)
    assert last["epoch"] == 2 and last["class_counts"] == splits.class_counts.tolist()  # the whole split's counts


def test_ddp_validation_error_equals_a_single_process_evaluation_of_best_pt(ddp_run: tuple[Path, DataConfig]) -> None:
    run_dir, data = ddp_run
    run = load_run(run_dir)
    val_set = TorchImageSet(build_splits(data).val, run.preprocess, augment=False)
    count = top1_error(run.model, make_loader(val_set, 4, 0, 0, False, False), torch.device("cpu"), None, SkipLog())
    best = load_checkpoint(run_dir / BEST_CHECKPOINT)
    logged = next(record for record in metrics(run_dir) if record["epoch"] == best["epoch"])
    assert count.seen == 9 and count.error == best["val_error"] == logged["val_error"]


def test_ddp_checkpoint_exports_and_serves(ddp_run: tuple[Path, DataConfig], tmp_path: Path) -> None:
    run_dir, data = ddp_run
    manifest = export_run(run_dir, tmp_path / "models", name="stripes", version="1", ensemble=True, check_images=4)
    assert manifest.labels == ["checker", "horizontal", "vertical"] and manifest.training_command.endswith("--nproc-per-node 2")
    image = Image.open(Path(data.dataset) / "vertical" / "05.png")
    probs, (ranking,) = Ensemble.load(tmp_path / "models", "cpu").predict([image], top_k=3, tta=False)
    assert probs.shape == (1, 1, 3) and probs.sum() == pytest.approx(1, abs=1e-5)
    run = load_run(run_dir)
    crop = tta_crops(image, run.preprocess, run.preprocess.sizes(tta=False))[0]
    with torch.inference_mode():
        expected = int(run.model(torch.from_numpy(np.ascontiguousarray(crop))[None]).argmax())
    assert int(ranking.indices[0]) == expected


# --------------------------------------------------------------------------- torchrun's environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_torchrun_environment_is_honoured(image_folder: Path, tmp_path: Path, train_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT as torchrun sets them: the run joins a gloo group and leaves it."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    config: TrainConfig = train_config(
        DataConfig(dataset=str(image_folder), val_per_class=4), tmp_path / "run",
        model="test_resnet", input_size=16, tta_sizes=(16, 18, 20), batch_size=8, lr_scaling="linear",
    )
    run_dir = train(config)
    world = json.loads((run_dir / CONFIG_FILE).read_text())["world"]
    assert (world["world_size"], world["backend"], world["effective_batch_size"]) == (1, "gloo", 8)  # a process group of 1
    assert [record["val_samples"] for record in metrics(run_dir)] == [12]
    assert not dist.is_initialized()  # left at the end of the run
