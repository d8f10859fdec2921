"""``productrec evaluate``: test error, per-class and head/middle/tail accuracy, memorisation, TTA and ensembles.

Both sources run through ``app.engine.ensemble.Ensemble``, the service's engine:
run directories as PyTorch members (``TorchMember``), an exported repository as
onnxruntime members. Crops come from ``app.contract.preprocess.tta_crops`` and are
combined by ``app.contract.ranking``; nothing here re-implements either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from app.cli import CommandError
from app.contract.ranking import predict_top1
from app.engine.ensemble import Ensemble
from app.contract.manifest import EnsembleSpec, MemberRef, ModelManifest, read_ensemble_spec, sha256_file, write_ensemble, write_json
from app.contract.preprocess import largest_size, tta_crops
from training.config import DataConfig, user_errors
from training.data import ImageSet, Splits, build_splits
from training.image_sets import readable_batches
from training.export import run_manifest
from training.plots import plot_per_class_accuracy
from training.runs import BEST_CHECKPOINT, TEST_METRICS_FILE, TrainedRun, load_run
from training.train import resolve_device
from training.validation_choice import choose_strategy, choose_tta, score_strategies, score_tta_sets, validation_logits

log = logging.getLogger("productrec.evaluate")

TTA = "tta"
GROUP_NAMES = ("head", "middle", "tail")


@dataclass
class TorchMember:
    """A run's best model as an ``app.engine.ensemble.Member``, so the service's ``Ensemble`` drives it."""

    manifest: ModelManifest
    model: nn.Module
    device: torch.device

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device.type}"]

    def logits(self, crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(self.device)).float().cpu().numpy()


def load_runs_ensemble(run_dirs: Sequence[Path], device: str = "auto") -> tuple[Ensemble, list[TrainedRun]]:
    """The best models of ``run_dirs`` as one top-1-vote ensemble (PyTorch members)."""
    torch_device = resolve_device(device)
    runs = [load_run(Path(run_dir), torch_device) for run_dir in run_dirs]
    members = []
    for index, run in enumerate(runs):
        if run.labels != runs[0].labels:
            raise ValueError(f"{run.run_dir}: labels differ from {runs[0].run_dir}'s; an ensemble needs one label space")
        members.append(TorchMember(run_manifest(run, _member_name(run, index, runs), "run"), run.model, torch_device))
    spec = EnsembleSpec("runs", [MemberRef(member.manifest.name, "run") for member in members], "vote")
    return Ensemble(spec, members), runs


def _member_name(run: TrainedRun, index: int, runs: Sequence[TrainedRun]) -> str:
    names = [other.run_dir.name for other in runs]
    return run.run_dir.name if names.count(run.run_dir.name) == 1 else f"{run.run_dir.name}#{index}"


# --------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """Top-1 classes of the members and of the ensemble for each setting (a TTA size, or ``tta``)."""

    indices: np.ndarray  # [N] the images that could be read
    labels: np.ndarray  # [N] their labels
    members: dict[str, np.ndarray]  # setting -> [M, N]
    ensemble: dict[str, np.ndarray]  # setting -> [N]
    skipped: list[str]


def setting_sizes(ensemble: Ensemble) -> list[int]:
    """The TTA sizes of the first member (each is also evaluated on its own)."""
    return list(ensemble.members[0].manifest.preprocess.sizes(tta=True))


def predict(
    ensemble: Ensemble,
    images: ImageSet,
    indices: np.ndarray,
    batch_size: int,
    per_size: bool,
    description: str,
) -> Predictions:
    """Run every member on ``images[indices]``: all TTA sizes averaged (``tta``) and, with ``per_size``, each size alone.

    Without ``per_size`` only the single centre crop of the first TTA size is run (setting ``single``).
    """
    n_sizes = len(setting_sizes(ensemble))
    settings = [*(str(size) for size in setting_sizes(ensemble)), TTA] if per_size else ["single"]
    member_top1: dict[str, list[np.ndarray]] = {setting: [] for setting in settings}
    ensemble_top1: dict[str, list[np.ndarray]] = {setting: [] for setting in settings}
    kept, skipped = [], []
    shorter_side = largest_size(ensemble.crop_plan(tta=True))  # JPEG files decode as the service decodes them
    for decoded, batch_indices in readable_batches(images, indices, batch_size, description, shorter_side, skipped):
        kept += batch_indices
        probabilities = {}
        if per_size:
            probabilities[TTA] = ensemble.member_probabilities([ensemble.preprocess(image, tta=True) for image in decoded], tta=True)
            for position in range(n_sizes):
                probabilities[settings[position]] = ensemble.member_probabilities(
                    [_single_size_crops(ensemble, image, position) for image in decoded], tta=False
                )
        else:
            probabilities["single"] = ensemble.member_probabilities([ensemble.preprocess(image, tta=False) for image in decoded], tta=False)
        for setting, probs in probabilities.items():
            member_top1[setting].append(probs.argmax(axis=2))
            ensemble_top1[setting].append(predict_top1(probs, ensemble.strategy))
    n_members = len(ensemble.members)
    kept_indices = np.asarray(kept, dtype=np.int64)
    return Predictions(
        indices=kept_indices,
        labels=images.labels[kept_indices],
        members={s: np.concatenate(v, axis=1) if v else np.zeros((n_members, 0), np.int64) for s, v in member_top1.items()},
        ensemble={s: np.concatenate(v) if v else np.zeros(0, np.int64) for s, v in ensemble_top1.items()},
        skipped=skipped,
    )


def _single_size_crops(ensemble: Ensemble, image: Image.Image, position: int) -> list[np.ndarray]:
    """The centre crop at each group's ``position``-th TTA size, grouped as ``crop_groups(tta=False)`` expects."""
    crops = []
    for group in ensemble.crop_groups(tta=False):
        sizes = group.config.sizes(tta=True)
        crops.append(tta_crops(image, group.config, (sizes[min(position, len(sizes) - 1)],)))
    return crops


# --------------------------------------------------------------------------- metrics


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class without test images)."""
    totals = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels[predicted == labels], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, correct / np.maximum(totals, 1), np.nan)


def class_groups(class_counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Head, middle and tail thirds of the classes by training count (most images first)."""
    order = np.argsort(-np.asarray(class_counts), kind="stable")
    return dict(zip(GROUP_NAMES, np.array_split(order, len(GROUP_NAMES))))


def memorisation(predicted: np.ndarray, noisy_labels: np.ndarray, clean_labels: np.ndarray) -> dict[str, float | int | None]:
    """On training samples whose label was flipped: how often the model predicts the noisy label, and the clean one."""
    flipped = noisy_labels != clean_labels
    count = int(flipped.sum())
    if count == 0:
        return {"noisy_labels": 0, "predicts_noisy_label": None, "predicts_clean_label": None}
    return {
        "noisy_labels": count,
        "predicts_noisy_label": float(np.mean(predicted[flipped] == noisy_labels[flipped])),
        "predicts_clean_label": float(np.mean(predicted[flipped] == clean_labels[flipped])),
    }


def model_metrics(
    top1: dict[str, np.ndarray], labels: np.ndarray, class_counts: Sequence[int], n_classes: int
) -> dict[str, Any]:
    """Errors per setting; per-class, class-mean and head/middle/tail accuracy with all TTA sizes averaged."""
    accuracy = per_class_accuracy(top1[TTA], labels, n_classes)
    return {
        "top1_error": {setting: float(np.mean(predicted != labels)) for setting, predicted in top1.items()},
        "mean_class_error": float(1 - np.nanmean(accuracy)),
        "per_class_accuracy": [None if np.isnan(value) else float(value) for value in accuracy],
        "group_accuracy": {name: float(np.nanmean(accuracy[classes])) for name, classes in class_groups(class_counts).items()},
    }


@dataclass
class DataSource:
    """Where test and training data come from, with optional new locations."""

    fmnist_dir: str | None = None
    test_dataset: str | None = None
    test_per_class: int | None = None  # another share of the benchmark's official test set (0: all of it)

    def trained_config(self, train_config: dict[str, Any]) -> DataConfig:
        """The data the model was trained and tested on, where it is now."""
        data = DataConfig(**train_config["data"])
        return dataclasses.replace(
            data, fmnist_dir=self.fmnist_dir or data.fmnist_dir, test_dataset=self.test_dataset or data.test_dataset
        )

    def config(self, train_config: dict[str, Any]) -> DataConfig:
        """The data to evaluate on: the trained data, with the test share given here."""
        data = self.trained_config(train_config)
        if self.test_per_class is None:
            return data
        return dataclasses.replace(data, test_per_class=self.test_per_class or None)


class SplitCache:
    """``build_splits`` once per distinct data configuration."""

    def __init__(self) -> None:
        self._splits: dict[str, Splits] = {}

    def get(self, config: DataConfig) -> Splits:
        key = json.dumps(dataclasses.asdict(config), sort_keys=True)
        if key not in self._splits:
            self._splits[key] = build_splits(config)
        return self._splits[key]


def evaluate_ensemble(
    ensemble: Ensemble,
    source: DataSource | None = None,
    batch_size: int = 128,
    with_memorisation: bool = True,
) -> dict[str, Any]:
    """The full report for an ensemble (of one or more members) on the test split of its training data."""
    source = source or DataSource()
    cache = SplitCache()
    manifests = [member.manifest for member in ensemble.members]
    configs = [source.config(manifest.train_config) for manifest in manifests]
    splits = cache.get(configs[0])
    if splits.test is None:
        raise ValueError("the training data has no test split; pass --test-dataset")
    for manifest in manifests:
        fingerprint = cache.get(source.trained_config(manifest.train_config)).fingerprint
        if manifest.data_fingerprint and fingerprint != manifest.data_fingerprint:
            log.warning("%s: the data rebuilt from its config has another fingerprint than the one it was trained on", manifest.name)
    n_classes = ensemble.num_classes
    test = splits.test
    predictions = predict(ensemble, test, np.arange(len(test)), batch_size, per_size=True, description="test")
    labels = predictions.labels
    report: dict[str, Any] = {
        "test_images": int(len(labels)),
        "skipped": predictions.skipped,
        "tta_sizes": setting_sizes(ensemble),
        "strategy": ensemble.strategy,
        "labels": list(ensemble.labels),
        "class_counts": list(manifests[0].class_counts),
        "members": {},
    }
    for index, manifest in enumerate(manifests):
        top1 = {setting: predicted[index] for setting, predicted in predictions.members.items()}
        report["members"][manifest.name] = {
            "architecture": manifest.architecture,
            "loss": dataclasses.asdict(manifest.loss),
            "data_fingerprint": manifest.data_fingerprint,
            **model_metrics(top1, labels, manifest.class_counts, n_classes),
        }
    if len(manifests) > 1:
        report["ensemble"] = model_metrics(predictions.ensemble, labels, manifests[0].class_counts, n_classes)
    if with_memorisation:
        _add_memorisation(report, ensemble, configs, cache, batch_size)
    _add_validation_tta(report, ensemble, configs, cache, batch_size)
    _add_validation_strategy(report, ensemble, configs, cache, batch_size)
    return report


def _add_validation_strategy(report: dict[str, Any], ensemble: Ensemble, configs: list[DataConfig], cache: SplitCache, batch_size: int) -> None:
    """The ensemble's validation error under each combination strategy, where its members share one validation split."""
    if len(ensemble.members) < 2:
        return
    splits = [cache.get(config) for config in configs]
    if len({split.fingerprint for split in splits}) > 1:  # the fingerprint covers the validation images and labels
        log.info("the members were trained on different data: no shared validation split to choose the strategy on")
        return
    errors, images = score_strategies(ensemble, splits[0].val, batch_size)
    report["validation_strategy"] = {"errors": errors, "images": images, "best": choose_strategy(errors, ensemble.strategy), "served": ensemble.strategy}


def _add_validation_tta(report: dict[str, Any], ensemble: Ensemble, configs: list[DataConfig], cache: SplitCache, batch_size: int) -> None:
    """Each member's validation error for every set of its training's TTA sizes, and the set export ships."""
    for member, config in zip(ensemble.members, configs):
        manifest = member.manifest
        candidates = tuple(manifest.train_config.get("model", {}).get("tta_sizes") or manifest.preprocess.sizes(tta=True))
        preprocess = dataclasses.replace(manifest.preprocess, tta_sizes=candidates)
        logits_by_size, labels = validation_logits(member.logits, cache.get(config).val, preprocess, candidates, batch_size)
        scores = score_tta_sets(logits_by_size, labels, candidates)
        report["members"][manifest.name]["validation_tta"] = {
            "errors": {"/".join(map(str, score.sizes)): score.error for score in scores},
            "best": list(choose_tta(scores, candidates[0])),
            "served": list(manifest.preprocess.sizes(tta=True)),
        }


def _add_memorisation(report: dict[str, Any], ensemble: Ensemble, configs: list[DataConfig], cache: SplitCache, batch_size: int) -> None:
    """Memorisation of the flipped training labels (single centre crop), per member and, on shared data, for the ensemble."""
    by_data: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        by_data.setdefault(cache.get(config).fingerprint, []).append(index)
    for member_indices in by_data.values():
        train = cache.get(configs[member_indices[0]]).train
        if train.clean_labels is None:
            continue
        flipped = np.flatnonzero(train.labels != train.clean_labels)
        predictions = predict(ensemble, train, flipped, batch_size, per_size=False, description="noisy training labels")
        clean = train.clean_labels[predictions.indices]
        for index in member_indices:
            name = ensemble.members[index].manifest.name
            report["members"][name]["memorisation"] = memorisation(predictions.members["single"][index], predictions.labels, clean)
        if "ensemble" in report and len(by_data) == 1:
            report["ensemble"]["memorisation"] = memorisation(predictions.ensemble["single"], predictions.labels, clean)


# --------------------------------------------------------------------------- output


def run_test_metrics(report: dict[str, Any], member: str, checkpoint: Path) -> dict[str, Any]:
    """A run's ``test_metrics.json`` (the manifest's test metrics), tied to its best.pt by sha256."""
    metrics = report["members"][member]
    first_size = str(report["tta_sizes"][0])
    summary = {
        "checkpoint_sha256": sha256_file(checkpoint),
        "test_images": report["test_images"],
        "test_top1_error": metrics["top1_error"][TTA],
        "test_top1_error_single_crop": metrics["top1_error"][first_size],
        "test_top1_error_by_size": {size: error for size, error in metrics["top1_error"].items() if size != TTA},
        "test_mean_class_error": metrics["mean_class_error"],
        "test_group_accuracy": metrics["group_accuracy"],
    }
    if "memorisation" in metrics:
        summary["memorisation"] = metrics["memorisation"]
    return summary


def format_report(report: dict[str, Any]) -> str:
    """A readable table: one row per member (and the ensemble), errors per TTA size and averaged."""
    sizes = [str(size) for size in report["tta_sizes"]]
    header = ["model", *(f"err@{size}" for size in sizes), "err TTA", "class-mean", *(f"acc {name}" for name in GROUP_NAMES), "noisy->noisy", "noisy->clean"]
    rows = [(name, metrics) for name, metrics in report["members"].items()]
    if "ensemble" in report:
        rows.append((f"ensemble ({report['strategy']})", report["ensemble"]))
    table = [header]
    for name, metrics in rows:
        memorised = metrics.get("memorisation", {})
        table.append([
            name,
            *(_number(metrics["top1_error"][size]) for size in sizes),
            _number(metrics["top1_error"][TTA]),
            _number(metrics["mean_class_error"]),
            *(_number(metrics["group_accuracy"][group]) for group in GROUP_NAMES),
            _number(memorised.get("predicts_noisy_label")),
            _number(memorised.get("predicts_clean_label")),
        ])
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = [
        f"Test split: {report['test_images']:,} images; TTA sizes {', '.join(sizes)} (err TTA: logits averaged); "
        f"{len(report['members'])} member(s), combined by top-1 {report['strategy']}",
        "top-1 error per resize size and with TTA; class-mean error; mean class accuracy of the head/middle/tail thirds "
        "by training count; of the flipped training labels, the fraction predicted as the noisy and as the clean label",
    ]
    lines += ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths))) for row in table]
    if report["skipped"]:
        lines.append(f"{len(report['skipped'])} unreadable test image(s) skipped")
    if "validation_strategy" in report:
        choice = report["validation_strategy"]
        lines.append(
            f"ensemble: validation top-1 error on {choice['images']:,} images by strategy: "
            + ", ".join(f"{strategy} {error:.4f}" for strategy, error in choice["errors"].items())
            + f" (best {choice['best']}, served {choice['served']})"
        )
    for name, metrics in report["members"].items():
        if "validation_tta" in metrics:
            choice = metrics["validation_tta"]
            lines.append(f"{name}: validation top-1 error of each TTA set (best {choice['best']}, served {choice['served']}):")
            lines.append("\n".join(f"  {sizes:<12} {error:.4f}" for sizes, error in choice["errors"].items()))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(args: argparse.Namespace) -> int:
    """``productrec evaluate``."""
    from app.engine.ensemble import ProviderUnavailableError

    if bool(args.run_dirs) == bool(args.repository):
        raise CommandError("give one or more run directories or --repository DIR (not both)")
    if args.choose_strategy and not args.repository:
        raise CommandError("--choose-strategy writes a repository's ensemble.json: give --repository DIR")
    if args.batch_size < 1:
        raise CommandError("--batch-size must be >= 1")
    runs: list[TrainedRun] = []
    with user_errors():
        try:
            if args.repository:
                ensemble = Ensemble.load(Path(args.repository), args.provider)
            else:
                ensemble, runs = load_runs_ensemble([Path(run_dir) for run_dir in args.run_dirs], args.device)
        except ProviderUnavailableError as exc:
            raise CommandError(str(exc)) from exc
        report = evaluate_ensemble(ensemble, DataSource(args.fmnist_dir, args.test_dataset, args.test_per_class), args.batch_size, args.memorisation)
    report["source"] = {"repository": args.repository} if args.repository else {"run_dirs": [str(run.run_dir) for run in runs]}
    if args.choose_strategy:
        _write_strategy(Path(args.repository), report)
    for run, member in zip(runs, ensemble.members):
        write_json(run.run_dir / TEST_METRICS_FILE, run_test_metrics(report, member.manifest.name, run.run_dir / BEST_CHECKPOINT))
    out = Path(args.out) if args.out else (runs[0].run_dir / "evaluation.json" if runs else None)
    plot = Path(args.plot) if args.plot else (out.with_name(out.stem + "_per_class.png") if out else None)
    print(format_report(report))
    if out:
        write_json(out, report)
        print(f"metrics: {out}")
    if plot:
        accuracies = {name: _nan_for_none(metrics["per_class_accuracy"]) for name, metrics in report["members"].items()}
        if "ensemble" in report:
            accuracies["ensemble"] = _nan_for_none(report["ensemble"]["per_class_accuracy"])
        plot_per_class_accuracy(report["class_counts"], accuracies, plot, title=f"per-class test accuracy (TTA {', '.join(map(str, report['tta_sizes']))})")
        print(f"per-class accuracy plot: {plot}")
    return 0


def _write_strategy(repository: Path, report: dict[str, Any]) -> None:
    """Write the validation's choice of strategy into the repository's ensemble.json (the service reloads it)."""
    choice = report.get("validation_strategy")
    if choice is None:
        raise CommandError("--choose-strategy needs an ensemble of two or more members trained on the same data")
    spec = read_ensemble_spec(repository)
    if spec.strategy != choice["best"]:
        write_ensemble(repository, dataclasses.replace(spec, strategy=choice["best"]))
    print(f"strategy: {choice['best']} ({repository / 'ensemble.json'}; was {spec.strategy})")


def _nan_for_none(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if value is None else value for value in values]
