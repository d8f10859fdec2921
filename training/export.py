"""Export a trained model to the ONNX model repository, checked against PyTorch first.

``productrec export RUN_DIR`` writes ``<repository>/<name>/<version>/{model.onnx,manifest.json}``
from the run's best.pt after checking the ONNX logits against PyTorch's on real
test images preprocessed by ``app.contract.preprocess.tta_crops``. On the validation
split it chooses the TTA sizes to ship and fits the calibration (``training.validation_choice``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort
import PIL
import torch
from PIL import Image

from app.contract.manifest import (
    ENSEMBLE_FILE,
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    EnsembleSpec,
    LossSpec,
    MemberRef,
    ModelManifest,
    load_member,
    member_dir,
    read_ensemble_spec,
    sha256_file,
    write_ensemble,
    write_json,
)
from app.contract.preprocess import PreprocessConfig, tta_crops
from training.config import ConfigError, user_errors
from training.data import Splits, build_splits
from training.image_sets import BadImageError
from training.runs import TrainedRun, load_run
from training.validation_choice import choose_on_validation, format_scores

log = logging.getLogger("productrec.export")

OPSET = 18
MAX_LOGIT_DIFF = 1e-3


class ExportParityError(RuntimeError):
    """The ONNX model's logits differ from PyTorch's by more than the tolerance."""


def export_onnx(model: torch.nn.Module, in_chans: int, input_size: int, path: Path, opset: int = OPSET) -> None:
    """Write ``model`` as ONNX with a dynamic batch axis and fixed input/output names."""
    model = model.eval()
    example = torch.zeros(2, in_chans, input_size, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def max_logit_difference(model: torch.nn.Module, onnx_path: Path, batch: np.ndarray) -> float:
    """max |Δlogit| between PyTorch and onnxruntime (CPU) on ``batch`` ``[N, C, H, W]``."""
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).float().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32)})
    return float(np.abs(actual - expected).max())


def export_to_repository(
    model: torch.nn.Module,
    manifest: ModelManifest,
    repository: Path,
    check_batch: np.ndarray,
    tolerance: float = MAX_LOGIT_DIFF,
) -> tuple[ModelManifest, float]:
    """Export, check parity on ``check_batch`` (real images, preprocessed), then write the entry.

    Nothing is written to the repository when the check fails. Returns the
    final manifest (with sha256 and opset) and the max |Δlogit| measured.
    """
    model = model.cpu().float().eval()
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / MODEL_FILE
        export_onnx(model, manifest.preprocess.in_chans, manifest.preprocess.input_size, staged)
        diff = max_logit_difference(model, staged, check_batch)
        log.info("ONNX parity on %d images: max |Δlogit| = %.2e", len(check_batch), diff)
        if not diff <= tolerance:
            raise ExportParityError(f"ONNX logits differ from PyTorch's by {diff:.3e} > {tolerance:.0e}; nothing written")
        target = member_dir(repository, manifest.name, manifest.version)
        target.mkdir(parents=True, exist_ok=True)
        final = replace(
            manifest,
            sha256=sha256_file(staged),
            opset=OPSET,
            model_file=MODEL_FILE,
            metrics={**manifest.metrics, "onnx_max_abs_logit_diff": diff},
        )
        staged.replace(target / MODEL_FILE)
    write_json(target / MANIFEST_FILE, final.to_dict())
    log.info("wrote %s", target)
    return final, diff


UNTRAINED_VERSION = "untrained"


def export_untrained(
    model: torch.nn.Module,
    repository: Path,
    name: str,
    architecture: str,
    preprocess: PreprocessConfig,
    labels: Sequence[str],
    check_images: Sequence[Image.Image],
    made_by: str,
) -> ModelManifest:
    """Export a model with random weights (for smoke tests and speed benchmarks) through the real path.

    Same ONNX export and parity check (on ``check_images``, real photos, with every TTA crop) and
    the same manifest as a trained member, with version ``untrained`` and no training record.
    """
    manifest = ModelManifest(
        name=name,
        version=UNTRAINED_VERSION,
        architecture=architecture,
        preprocess=preprocess,
        labels=list(labels),
        class_counts=[],
        loss=LossSpec(name="none"),
        sha256="",
        opset=0,
        training_command=f"untrained (random weights): {made_by}",
    )
    check = np.concatenate([tta_crops(image, preprocess, preprocess.sizes(tta=True)) for image in check_images])
    with torch.no_grad():
        return export_to_repository(model, manifest, repository, check)[0]


def write_default_ensemble(repository: Path, members: Sequence[tuple[str, str]], name: str = "default", strategy: str = "vote") -> Path:
    """Write ``ensemble.json`` naming ``members`` as (name, version) pairs."""
    return write_ensemble(repository, EnsembleSpec(name, [MemberRef(n, v) for n, v in members], strategy))


def run_manifest(run: TrainedRun, name: str, version: str) -> ModelManifest:
    """The repository manifest of a run's best checkpoint, before export fills in sha256 and opset."""
    return ModelManifest(
        name=name,
        version=str(version),
        architecture=run.config.model.model,
        preprocess=run.preprocess,
        labels=run.labels,
        class_counts=[int(count) for count in run.data["class_counts"]],
        loss=run.config.loss.spec(),
        sha256="",
        opset=0,
        training_command=run.command,
        data_fingerprint=run.data["fingerprint"],
        metrics={
            "val_top1_error": run.checkpoint["val_error"],
            "best_epoch": run.checkpoint["epoch"],
            "posthoc_tau": run.checkpoint.get("posthoc_tau", 0.0),
            "pillow": PIL.__version__,  # the resampling the member was evaluated with (the service warns on another)
            **({"posthoc_offsets_kept": bool(run.checkpoint["posthoc_offsets"]), "val_top1_error_before_offsets": run.checkpoint["val_error_before_offsets"]}
               if "posthoc_offsets" in run.checkpoint else {}),
            "noise_rate_realised": run.data.get("noise_rate_realised"),
            **run.test_metrics(),
        },
        train_config=run.config.to_dict(),
    )


def torch_logits(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` as a NumPy function of ``[N, C, H, W]`` crops (CPU, float32)."""
    model = model.cpu().float().eval()

    def logits(crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(crops, np.float32))).float().numpy()

    return logits


def chosen_on_validation(run: TrainedRun, manifest: ModelManifest, splits: Splits, keep_tta: bool = False) -> ModelManifest:
    """``manifest`` with the TTA sizes chosen on the validation split (``keep_tta``: the run's) and its calibration."""
    choice = choose_on_validation(torch_logits(run.model), splits.val, manifest.preprocess, keep=keep_tta)
    log.info("validation error of each TTA set (%d images):\n%s", choice.calibration.validation_images, format_scores(choice.scores, choice.tta_sizes))
    validation = {"tta_sets": {"/".join(map(str, score.sizes)): score.error for score in choice.scores}, "tta_sizes": list(choice.tta_sizes)}
    return replace(
        manifest,
        preprocess=replace(manifest.preprocess, tta_sizes=choice.tta_sizes),
        calibration=choice.calibration,
        metrics={**manifest.metrics, "validation": validation},
    )


def parity_batch(run: TrainedRun, n_images: int, splits: Splits | None = None) -> np.ndarray:
    """Every TTA crop of ``n_images`` real images spread over the test split (validation if there is none)."""
    splits = splits or build_splits(run.config.data)
    images = splits.test if splits.test is not None else splits.val
    preprocess = run.preprocess
    crops = []
    for index in np.unique(np.linspace(0, len(images) - 1, min(n_images, len(images))).astype(int)):
        try:
            sizes = preprocess.sizes(tta=True)
            crops.append(tta_crops(images.load(int(index), max(sizes)), preprocess, sizes))
        except BadImageError as exc:
            log.warning("parity check: skipping %s", exc)
    if not crops:
        raise ConfigError("no readable test image for the ONNX parity check")
    return np.concatenate(crops)


def next_version(repository: Path, name: str) -> str:
    """One more than the highest integer version of ``name`` in the repository ("1" for the first)."""
    existing = [int(path.name) for path in (Path(repository) / name).glob("*") if path.name.isdigit()]
    return str(max(existing, default=0) + 1)


def add_to_ensemble(repository: Path, manifest: ModelManifest) -> Path:
    """Name the member in ``ensemble.json`` (created if missing; a member of the same name is replaced)."""
    repository = Path(repository)
    if not (repository / ENSEMBLE_FILE).exists():
        return write_default_ensemble(repository, [(manifest.name, manifest.version)])
    ref = MemberRef(manifest.name, manifest.version)
    spec = read_ensemble_spec(repository)
    others = [member for member in spec.members if member.name != manifest.name]
    if others and load_member(repository, others[0], verify=False).manifest.labels != manifest.labels:
        raise ConfigError(f"{manifest.name} has other labels than the ensemble's {others[0].name}; members must share one label space")
    if len(others) == len(spec.members):
        spec.members.append(ref)
    else:
        spec.members = [ref if member.name == manifest.name else member for member in spec.members]
    return write_ensemble(repository, spec)


def export_run(
    run_dir: Path,
    repository: Path,
    name: str | None = None,
    version: str | None = None,
    ensemble: bool = False,
    check_images: int = 32,
    keep_tta: bool = False,
) -> ModelManifest:
    """Export a run's best checkpoint as ``<repository>/<name>/<version>``; never overwrites an entry.

    ``name`` defaults to the architecture, ``version`` to the next integer. With
    ``ensemble`` the member is also named in ``ensemble.json``. The TTA sizes shipped are the set
    of the run's sizes that is best on validation (never worse than the single crop), or with
    ``keep_tta`` the run's own.
    """
    run = load_run(Path(run_dir))
    name = name or run.config.model.model
    version = str(version or next_version(repository, name))
    target = member_dir(repository, name, version)
    if (target / MANIFEST_FILE).exists() or (target / MODEL_FILE).exists():
        raise ConfigError(f"{target} already exists; choose another --version")
    splits = build_splits(run.config.data)
    manifest = chosen_on_validation(run, run_manifest(run, name, version), splits, keep_tta)
    final, _ = export_to_repository(run.model, manifest, Path(repository), parity_batch(run, check_images, splits))
    if ensemble:
        add_to_ensemble(Path(repository), final)
    return final


def main(args: argparse.Namespace) -> int:
    """``productrec export``."""
    from app.cli import CommandError

    with user_errors():
        try:
            manifest = export_run(
                Path(args.run_dir), Path(args.repository), args.name, args.version, args.ensemble_member, args.check_images, args.keep_tta_sizes
            )
        except ExportParityError as exc:
            raise CommandError(str(exc)) from exc
    target = member_dir(Path(args.repository), manifest.name, manifest.version)
    print(f"exported {args.run_dir} -> {target}")
    print(f"  ONNX parity: max |logit difference| = {manifest.metrics['onnx_max_abs_logit_diff']:.2e} (limit {MAX_LOGIT_DIFF:.0e})")
    print(f"  sha256 {manifest.sha256}, opset {manifest.opset}, {manifest.num_classes} classes")
    how = "kept as trained" if args.keep_tta_sizes else "chosen on validation"
    print(f"  TTA sizes {how}: {list(manifest.preprocess.sizes(tta=True))}")
    calibration = manifest.calibration
    if calibration is not None:
        print(f"  temperature {calibration.temperature:.3f}: validation ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}")
    if args.ensemble_member:
        print(f"  added to {Path(args.repository) / ENSEMBLE_FILE}")
    return 0
