"""Top-1 voting through the service, with constructed member outputs: a three-way tie broken by mean probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from serving_helpers import encode, noise_image, serving
from torch import nn

from app.contract.manifest import LossSpec, ModelManifest
from app.contract.preprocess import PreprocessConfig
from training.export import export_to_repository, write_default_ensemble

LABELS = ["a", "b", "c", "d", "e"]
# Each member votes for a different class (a, b, d: one vote each); c is every member's second choice
# and has the highest mean probability, but no vote.
MEMBER_PROBS = np.array(
    [
        [0.50, 0.05, 0.40, 0.025, 0.025],
        [0.10, 0.45, 0.40, 0.025, 0.025],
        [0.05, 0.05, 0.40, 0.45, 0.05],
    ]
)
MEAN = MEMBER_PROBS.mean(axis=0)  # a .2167, b .1833, c .4, d .1667, e .0333


class ConstantLogits(nn.Module):
    """Ignores its input (but keeps the batch axis) and returns fixed logits."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1] * 0 + self.logits


def constant_repository(repository: Path, member_probs: np.ndarray) -> Path:
    """A model repository whose members always output ``member_probs`` (one row per member)."""
    members = []
    for index, probs in enumerate(member_probs):
        manifest = ModelManifest(
            name=f"constant{index}", version="1", architecture="constant",
            preprocess=PreprocessConfig(input_size=8, in_chans=1, mean=(0.5,), std=(0.25,), tta_sizes=(8, 10)), labels=LABELS,
            class_counts=[], loss=LossSpec("ce"), sha256="", opset=0,
        )  # fmt: skip
        check_batch = np.random.default_rng(index).normal(size=(2, 1, 8, 8)).astype(np.float32)
        final, _ = export_to_repository(ConstantLogits(np.log(probs)), manifest, repository, check_batch)
        members.append((final.name, final.version))
    write_default_ensemble(repository, members, name="constructed", strategy="vote")
    return repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return constant_repository(tmp_path_factory.mktemp("voting") / "models", MEMBER_PROBS)


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode(noise_image(0, (12, 9)), "PNG")


def predict(client, image: bytes, top_k: int = 5) -> dict:
    response = client.post("/v1/predict", params={"top_k": top_k}, content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def test_three_way_vote_tie_is_broken_by_mean_probability(repository, image) -> None:
    with serving(repository, decode_workers=1) as client:
        prediction = predict(client, image)
        top1 = predict(client, image, top_k=1)
    labels = prediction["labels"]
    # a, b, d have one vote each and are ordered by mean probability; c (no vote) follows despite the highest mean.
    assert [label["label"] for label in labels] == ["a", "b", "d", "c", "e"]
    assert [label["votes"] for label in labels] == [1, 1, 1, 0, 0]
    expected_scores = [MEAN[LABELS.index(label["label"])] for label in labels]
    np.testing.assert_allclose([label["score"] for label in labels], expected_scores, rtol=1e-5)
    assert [member["label"] for member in prediction["members"]] == ["a", "b", "d"]
    assert prediction["strategy"] == "vote" and prediction["ensemble"] == "constructed"
    assert [label["label"] for label in top1["labels"]] == ["a"]


def test_mean_strategy_setting_ranks_by_mean_probability(repository, image) -> None:
    with serving(repository, decode_workers=1, strategy="mean") as client:
        prediction = predict(client, image)
    assert [label["label"] for label in prediction["labels"]] == ["c", "a", "b", "d", "e"]
    assert prediction["strategy"] == "mean"


def test_two_votes_beat_a_higher_mean(tmp_path, image) -> None:
    confident = np.array([[0.02, 0.96, 0.01, 0.005, 0.005]])
    hesitant = np.array([[0.45, 0.40, 0.05, 0.05, 0.05]] * 2)
    repository = constant_repository(tmp_path / "models", np.concatenate([hesitant, confident]))
    with serving(repository, decode_workers=1) as client:
        labels = predict(client, image, top_k=2)["labels"]
    # a: 2 votes, mean .307; b: 1 vote, mean .587
    assert [(label["label"], label["votes"]) for label in labels] == [("a", 2), ("b", 1)]
    assert labels[0]["score"] < labels[1]["score"]
