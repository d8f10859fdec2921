"""Helpers of the v2 protocol tests (test_v2.py, test_v2_grpc.py): references from /v1 and onnxruntime."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
from serving_helpers import assert_same_ranking

from app.contract.manifest import LoadedMember, ModelManifest
from app.contract.preprocess import decode_image, tta_crops

SERVE_OPTIONS = ["--default-top-k", "3", "--decode-workers", "1", "--intra-op-threads", "1", "--max-batch-items", "8"]


def v1_labels(base_url: str, data: bytes, top_k: int = 3) -> list[dict]:
    response = httpx.post(f"{base_url}/v1/predict", params={"top_k": top_k}, content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()["labels"]


def assert_classification_matches(row: np.ndarray, reference: list[dict]) -> None:
    """``"score:index:label"`` strings rank like /v1's labels (near-ties may swap: other batch, other float bits)."""
    parsed = [element.decode().split(":", 2) for element in row]
    names = {label["index"]: label["label"] for label in reference}
    assert all(label == names.get(int(index), label) for _, index, label in parsed)
    labels = [{"index": int(index), "score": float(score), "votes": ref["votes"]} for (score, index, _), ref in zip(parsed, reference)]
    assert_same_ranking(labels, [r["index"] for r in reference], [r["score"] for r in reference], [r["votes"] for r in reference])


def member_crops(manifest: ModelManifest, images: list[bytes]) -> np.ndarray:
    """Single-crop preprocessed ``[N, C, H, W]`` inputs for one member, as its manifest says."""
    config = manifest.preprocess
    decoded = [decode_image(data, config.in_chans, 10**8) for data in images]
    return np.concatenate([tta_crops(image, config, config.sizes(False)) for image in decoded]).astype(np.float32)


def onnx_logits(member: LoadedMember, crops: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(member.onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([member.manifest.output_name], {member.manifest.input_name: crops})
    return logits
