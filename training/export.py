"""Export a trained model to the ONNX model repository, checked against PyTorch first."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch

from app.manifest import (
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    EnsembleSpec,
    LossSpec,
    MemberRef,
    ModelManifest,
    member_dir,
    sha256_file,
    write_ensemble,
    write_json,
)

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
        export_onnx(model, manifest.in_chans, manifest.input_size, staged)
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


def write_default_ensemble(repository: Path, members: Sequence[tuple[str, str]], name: str = "default", strategy: str = "vote") -> Path:
    """Write ``ensemble.json`` naming ``members`` as (name, version) pairs."""
    return write_ensemble(repository, EnsembleSpec(name, [MemberRef(n, v) for n, v in members], strategy))


def loss_spec(config: dict[str, Any]) -> LossSpec:
    """The manifest's loss section from a run's loss config."""
    symmetric = config["loss"] in ("sce", "bsce")
    return LossSpec(
        name=config["loss"],
        alpha=config["alpha"] if symmetric else 1.0,
        beta=config["beta"] if symmetric else 0.0,
        log_zero=config["log_zero"] if symmetric else None,
        drw_epoch=config.get("drw_epoch"),
    )
