"""``productrec train``: a timm classifier trained with SGD and a plateau schedule.

The learning rate is divided by 10 when the validation top-1 error has not
improved for ``patience`` epochs, and training stops when it would fall below
``min_lr`` (or at ``epochs``). Augmentation is ``app.contract.preprocess.random_scaled_crop``
and validation the single centre crop of ``app.contract.preprocess.tta_crops``: the same
resize and crop code the service runs. See ``training.runs`` for what a run
directory holds.

Several processes train one model with DDP (``--nproc-per-node`` or ``torchrun``, see
``training.distributed``): each rank trains on its shard of every epoch, validation errors are
summed over the ranks, and rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.cli import CommandError
from app.contract.manifest import write_json
from training.config import FMNIST_BENCHMARK, ConfigError, TrainConfig, command_line, config_from_args, user_errors
from training.data import Splits, build_splits, validation_summary
from training.distributed import (
    BatchAndLr,
    RankInfo,
    average_buffers,
    check_sync_bn,
    convert_sync_bn,
    gather_over_ranks,
    launch,
    launched_by_torchrun,
    process_group,
    wrap_ddp,
)
from training.epoch import collect_logits, top1_error, train_one_epoch
from training.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from training.loaders import SkipLog, TorchImageSet, make_loader
from training.losses import create_loss
from training.memorisation import SusceptibilityMonitor
from training.models import check_model_config, create_model, model_normalization
from training.plots import plot_curves
from training.posthoc import (
    AdjustedErrors,
    OffsetFit,
    adjusted_state_dict,
    class_offsets,
    classifier_bias_key,
    log_prior,
    offset_images,
    offset_state_dict,
)
from training.schedule import PlateauSchedule
from training.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    CURVES_FILE,
    DATA_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    POSTHOC_FILE,
    load_checkpoint,
    preprocess_config,
    save_checkpoint,
)

log = logging.getLogger("productrec.train")

PLOT_INTERVAL_S = 60  # curves.png is redrawn at most this often while training, and at the end


# --------------------------------------------------------------------------- device and RNG


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with a GradScaler); None (fp32) on the CPU or without --amp."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain values (weights-only loadable)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, key, *rest = state["python"]
    random.setstate((version, tuple(key), *rest))
    name, keys, *numpy_rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *numpy_rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the run


def resolve_config(config: TrainConfig, splits: Splits, model: nn.Module) -> TrainConfig:
    """Fill in mean/std: given ones, Fashion-MNIST's for the benchmark, else the model's (ImageNet's)."""
    in_chans = splits.in_chans
    model_config = config.model
    if model_config.mean is not None and model_config.std is not None:
        mean, std = model_config.mean, model_config.std
        if len(mean) == 1 or len(std) == 1:
            mean, std = mean * (in_chans // len(mean)), std * (in_chans // len(std))
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(f"--mean/--std need 1 or {in_chans} values for {in_chans}-channel images")
    elif config.data.dataset == FMNIST_BENCHMARK:
        mean, std = (FASHION_MNIST_MEAN,) * in_chans, (FASHION_MNIST_STD,) * in_chans
    else:
        mean, std = model_normalization(model, in_chans)
    return replace(config, model=replace(model_config, mean=tuple(map(float, mean)), std=tuple(map(float, std))))


def data_summary(splits: Splits, config: TrainConfig) -> dict[str, Any]:
    """data.json: what the service and the evaluation need to know about the training data."""
    return {
        "label_names": list(splits.label_names),
        "class_counts": [int(count) for count in splits.class_counts],
        "fingerprint": splits.fingerprint,
        "noise_rate_realised": splits.noise_rate_realised,
        "in_chans": splits.in_chans,
        "mean": list(config.model.mean or ()),
        "std": list(config.model.std or ()),
        "sizes": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": None if splits.test is None else len(splits.test),
        },
        "validation": validation_summary(splits),
        "skipped": [list(entry) for entry in splits.skipped],
    }


def check_options(config: TrainConfig) -> None:
    """Refuse options that cannot work before any data is read (``ConfigError``)."""
    config.validate()
    check_model_config(config.model.model, None if config.run.resume else config.model.pretrained)
    run_dir = Path(config.run.output)
    if not config.run.resume and (run_dir / LAST_CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output")


class TrainingRun:
    """One run, prepared (data, model, optimizer, possibly resumed) and ready to ``fit``.

    Under DDP every rank prepares the same run (the whole training split and its class counts, rank 0's
    last.pt on resume) and trains on its shard of each epoch; only rank 0 writes the run directory.
    """

    def __init__(self, config: TrainConfig, command: str = "", rank: RankInfo | None = None) -> None:
        """Check the options and read the data, raising ``ConfigError``/``ValueError``/``FileNotFoundError`` on bad input."""
        check_options(config)
        self.rank = rank or RankInfo(resolve_device(config.run.device))
        self.device, self.run_dir = self.rank.device, Path(config.run.output)
        self.amp_dtype = autocast_dtype(self.device, config.run.amp)
        # The command that reproduces the run from scratch: --resume is how it was continued, not what it is.
        self.command = command or command_line(replace(config, run=replace(config.run, resume=False)))
        seed_everything(config.run.seed)
        self.splits = build_splits(config.data)
        resume_from = load_checkpoint(self.run_dir / LAST_CHECKPOINT) if config.run.resume else None
        self.config = self._build_model(config, pretrained=resume_from is None)
        self._build_optimisation()
        if resume_from is not None:
            self._resume(resume_from)
        self.trained_model = wrap_ddp(self.model, self.rank)
        self._build_loaders()

    def _build_model(self, config: TrainConfig, pretrained: bool) -> TrainConfig:
        """The model on its device (SyncBatchNorm when asked); returns ``config`` with mean/std resolved."""
        model = create_model(
            config.model.model, len(self.splits.label_names), self.splits.in_chans,
            config.model.pretrained if pretrained else None, config.model.model_kwargs,
        )
        resolved = resolve_config(config, self.splits, model)
        self.bias_key = classifier_bias_key(model) if config.loss.posthoc_adjust or config.loss.posthoc_offsets else ""
        self.model = convert_sync_bn(model.to(self.device), self.rank, config.distributed.sync_bn)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        return resolved

    def _build_optimisation(self) -> None:
        """The loss (class weights of the whole training split), SGD at the rule's learning rate, the AMP scaler and the schedule."""
        optim, loss = self.config.optim, self.config.loss.spec()
        self.batch_and_lr = BatchAndLr.resolve(optim, self.config.distributed.lr_scaling, self.rank)
        self.loss_fn = create_loss(loss.name, self.splits.class_counts.tolist(), **loss.params).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.batch_and_lr.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedule = PlateauSchedule(self.batch_and_lr.lr, optim.patience, self.batch_and_lr.min_lr)
        self.log_prior = log_prior(self.splits.class_counts.tolist()) if self.config.loss.posthoc_adjust else None
        self.start_epoch, self.best_epoch = 0, 0
        self.skips = SkipLog()

    def _build_loaders(self) -> None:
        """This rank's shards of the training and validation splits."""
        run, rank = self.config.run, self.rank
        self.preprocess = preprocess_config(self.config.model, self.splits.in_chans)
        pin = self.device.type == "cuda"
        train_set = TorchImageSet(self.splits.train, self.preprocess, augment=True, flip=self.config.model.hflip, seed=run.seed)
        val_set = TorchImageSet(self.splits.val, self.preprocess, augment=False)
        batch_size = self.config.optim.batch_size
        self.train_loader = make_loader(train_set, batch_size, run.workers, run.seed, True, pin, rank.rank, rank.world_size)
        self.val_loader = make_loader(val_set, batch_size * 2, run.workers, run.seed, False, pin, rank.rank, rank.world_size)
        held_in = TorchImageSet(self.splits.train, self.preprocess, augment=False)
        self.susceptibility = SusceptibilityMonitor(held_in, len(self.splits.label_names), batch_size, run.seed, self.device)

    def _resume(self, checkpoint: dict[str, Any]) -> None:
        for key, expected in (("architecture", self.config.model.model), ("data_fingerprint", self.splits.fingerprint)):
            if checkpoint[key] != expected:
                raise ConfigError(
                    f"--resume: {self.run_dir / LAST_CHECKPOINT} has {key} {checkpoint[key]!r}, "
                    f"but the options give {expected!r}; resume with the run's own options (see its {CONFIG_FILE})"
                )
        self.config = replace(self.config, model=replace(self.config.model, mean=tuple(checkpoint["mean"]), std=tuple(checkpoint["std"])))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.loss_fn.load_state_dict(checkpoint.get("loss", self.loss_fn.state_dict()))  # CDB-W's weights
        # The learning rate and the plateau state continue; patience and min_lr are the options given now.
        self.schedule.patience, self.schedule.min_lr = self.config.optim.patience, self.batch_and_lr.min_lr
        self.start_epoch, self.best_epoch = int(checkpoint["epoch"]), int(checkpoint["best_epoch"])
        restore_rng_state(checkpoint["rng"])
        log.info("resuming %s after epoch %d (best validation error %.4f at epoch %d)", self.run_dir, self.start_epoch, self.schedule.best, self.best_epoch)

    def _metadata(self) -> dict[str, Any]:
        """What every checkpoint carries besides the weights."""
        return {
            "architecture": self.config.model.model,
            "in_chans": self.splits.in_chans,
            "num_classes": len(self.splits.label_names),
            "mean": list(self.config.model.mean),
            "std": list(self.config.model.std),
            "label_names": list(self.splits.label_names),
            "class_counts": [int(count) for count in self.splits.class_counts],
            "data_fingerprint": self.splits.fingerprint,
            "config": self.config.to_dict(),
        }

    def _write_run_files(self) -> list[dict[str, Any]]:
        """config.json (with the world size, effective batch and learning rate) and data.json; on resume, the metrics of the epochs the checkpoint holds."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / CONFIG_FILE, {**self.config.to_dict(), "command": self.command, "world": dataclasses.asdict(self.batch_and_lr)})
        write_json(self.run_dir / DATA_FILE, data_summary(self.splits, self.config))
        metrics_path = self.run_dir / METRICS_FILE
        records = []
        if self.start_epoch and metrics_path.exists():
            records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            records = [record for record in records if record["epoch"] <= self.start_epoch]
        metrics_path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return records

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate, step the schedule; rank 0 logs the metrics and saves the checkpoints."""
        optim = self.config.optim
        started = time.perf_counter()
        lr = self.schedule.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.loss_fn.set_epoch(epoch, optim.epochs)
        self.train_loader.sampler.set_epoch(epoch)
        susceptibility = self.susceptibility.measure(self.model, self.optimizer, epoch, self.batch_and_lr.lr)
        result = train_one_epoch(
            self.trained_model, self.train_loader, self.loss_fn, self.optimizer, self.scaler, self.device,
            self.amp_dtype, self.skips, f"epoch {epoch + 1}/{optim.epochs}", show_progress=self.rank.is_primary,
            mixup=self.config.model.mixup,
        )
        average_buffers(self.model)
        adjusted = AdjustedErrors(self.log_prior) if self.log_prior is not None else None
        val = top1_error(self.model, self.val_loader, self.device, self.amp_dtype, self.skips, len(self.splits.label_names), adjusted)
        tau, val_error = (adjusted.best(val.wrong_by_tau) if adjusted else (0.0, val.wrong))
        val_error /= val.seen
        if self.loss_fn.wants_class_accuracy():
            self.loss_fn.observe_class_accuracy(val.class_accuracy)
        for reasons in gather_over_ranks(self.skips.reasons):
            self.skips.add(reasons)
        improved = self.schedule.step(val_error)
        if improved:
            self.best_epoch = epoch + 1
        record = {
            "epoch": epoch + 1,
            "train_loss": result.loss,
            "train_error": result.error,
            "val_error": val_error,
            **({"val_error_unadjusted": val.error, "posthoc_tau": tau} if adjusted else {}),
            "susceptibility": susceptibility,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "train_samples": result.samples,
            "val_samples": val.seen,
        }
        if self.rank.is_primary:
            self._save(record, improved)
        log.info(
            "epoch %d/%d: loss %.4f, train error %.4f, val error %.4f%s, susceptibility %.4f, lr %.1e, %.1fs",
            epoch + 1, optim.epochs, result.loss, result.error, val_error, " (best)" if improved else "", susceptibility, lr, record["seconds"],
        )
        return record

    def _save(self, record: dict[str, Any], improved: bool) -> None:
        """The epoch's metrics line, best.pt when it improved, and last.pt."""
        with open(self.run_dir / METRICS_FILE, "a") as metrics:
            metrics.write(json.dumps(record) + "\n")
        weights = {**self._metadata(), "model": self.model.state_dict(), "epoch": record["epoch"]}
        if improved:
            tau = record.get("posthoc_tau", 0.0)
            best = adjusted_state_dict(weights["model"], self.bias_key, tau, self.log_prior)  # unchanged at τ = 0
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, {**weights, "model": best, "val_error": record["val_error"], "posthoc_tau": tau})
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, {
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
        })

    def _fit_offsets(self) -> None:
        """Fit the class offsets on best.pt's validation logits and fold them into its classifier bias, once per best.pt."""
        path = self.run_dir / BEST_CHECKPOINT
        best = load_checkpoint(path)
        if "posthoc_offsets" in best:
            log.info("%s already carries its class offsets (%s)", path, POSTHOC_FILE)
            return
        run = self.config.run
        images, skipped = offset_images(len(self.splits.val), len(self.splits.label_names))
        if skipped:
            fit = OffsetFit([], 0, best["val_error"], best["val_error"], False, skipped)
        else:
            self.model.load_state_dict(best["model"])  # training is over: the model is free
            shuffled = images < len(self.splits.val)  # a seeded sample of the split, where it is too large to hold
            val_set = TorchImageSet(self.splits.val, self.preprocess, augment=False)
            loader = make_loader(val_set, self.config.optim.batch_size * 2, run.workers, run.seed, shuffled, False)
            logits, labels = collect_logits(self.model, loader, self.device, self.amp_dtype, self.skips, images)
            fit = class_offsets(logits, labels, seed=run.seed)
        model = offset_state_dict(best["model"], self.bias_key, fit.offsets) if fit.kept else best["model"]
        save_checkpoint(path, {
            **best, "model": model, "val_error": fit.val_error, "val_error_before_offsets": fit.error_before,
            "posthoc_offsets": fit.offsets if fit.kept else [],
        })
        write_json(self.run_dir / POSTHOC_FILE, {**dataclasses.asdict(fit), "val_error": fit.val_error})
        if fit.skipped:
            log.info("class offsets not fitted: %s", fit.skipped)
        else:
            log.info(
                "class offsets on %d validation images: error %.4f without, %.4f cross-fitted: %s",
                fit.images, fit.error_before, fit.error_cross_fitted, "kept, folded into best.pt" if fit.kept else "not kept",
            )

    def fit(self) -> Path:
        """Train until the schedule finishes or ``epochs``; returns the run directory."""
        primary = self.rank.is_primary
        records = self._write_run_files() if primary else []
        optim, world = self.config.optim, self.batch_and_lr
        log.info(
            "training %s on %s (%s): %d train / %d val images, %d classes; run directory %s",
            self.config.model.model, self.device, self.amp_dtype or "fp32", len(self.splits.train),
            len(self.splits.val), len(self.splits.label_names), self.run_dir,
        )
        log.info(
            "%d process(es) x batch %d = effective batch %d; lr %.3g, min lr %.3g (--lr-scaling %s)",
            world.world_size, world.batch_size_per_process, world.effective_batch_size, world.lr, world.min_lr, world.lr_scaling,
        )
        last_plot = time.monotonic()
        try:
            for epoch in range(self.start_epoch, optim.epochs):
                if self.schedule.finished:
                    break
                records.append(self._epoch(epoch))
                if primary and time.monotonic() - last_plot >= PLOT_INTERVAL_S:
                    plot_curves(records, self.run_dir / CURVES_FILE)
                    last_plot = time.monotonic()
        finally:
            if primary and records:
                plot_curves(records, self.run_dir / CURVES_FILE)
            if primary and self.skips.reasons:
                write_json(self.run_dir / DATA_FILE, {**data_summary(self.splits, self.config), "skipped_while_training": self.skips.reasons})
        if self.schedule.finished:
            log.info("learning rate fell below --min-lr %.1e: stopped", world.min_lr)
        if primary and self.config.loss.posthoc_offsets and (self.run_dir / BEST_CHECKPOINT).is_file():
            self._fit_offsets()
        log.info("best validation top-1 error %.4f at epoch %d; %s", self.schedule.best, self.best_epoch, self.run_dir / BEST_CHECKPOINT)
        return self.run_dir


def train(config: TrainConfig, command: str = "") -> Path:
    """Train a model as ``config`` says, in the process group torchrun described if any; returns the run directory (see ``training.runs``)."""
    with process_group(resolve_device(config.run.device)) as rank:
        return TrainingRun(config, command, rank).fit()


def launch_workers(config: TrainConfig) -> int:
    """``--nproc-per-node N``: the same command in N processes through torch.distributed.run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    processes = config.distributed.nproc_per_node
    try:
        launch(processes, shlex.split(command_line(config))[1:])
    except ChildFailedError as exc:
        raise CommandError(f"a training process of {processes} failed (its error is above)") from exc
    return 0


def main(args: argparse.Namespace) -> int:
    """``productrec train``: in this process, or (``--nproc-per-node`` > 1, not under torchrun) in several."""
    with user_errors():
        config = config_from_args(args)
        check_options(config)
        device = resolve_device(config.run.device)
        if config.distributed.nproc_per_node > 1:
            check_sync_bn(config.distributed.sync_bn, device)
    if config.distributed.nproc_per_node > 1 and not launched_by_torchrun():
        return launch_workers(config)
    with process_group(device) as rank:
        with user_errors():
            run = TrainingRun(config, rank=rank)
        run_dir = run.fit()
    if rank.is_primary:
        print(f"run directory: {run_dir} (best validation top-1 error {run.schedule.best:.4f} at epoch {run.best_epoch})")
    return 0
