"""Combining crops and members (app/contract/ranking.py): softmax, crop averaging, top-1 voting with constructed ties."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.contract.ranking import crop_average_probabilities, predict_top1, rank, softmax, top_indices


def members(*rows: list[float]) -> np.ndarray:
    """``[M, 1, K]`` member probabilities for one image."""
    return np.array(rows, dtype=np.float32)[:, None, :]


def test_softmax_is_stable_and_normalised() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    probs = softmax(logits)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(probs[0], softmax(np.array([[1.0, 2.0, 0.0]]))[0], rtol=1e-6)


def test_crops_are_averaged_as_logits_before_the_softmax() -> None:
    # two images x two crops, crops of one image adjacent
    logits = np.array([[4.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 1.0]])
    probs = crop_average_probabilities(logits, n_crops=2)
    np.testing.assert_allclose(probs, softmax(np.array([[2.0, 1.0], [2.0, 1.0]])), rtol=1e-6)
    averaged_probabilities = softmax(logits).reshape(2, 2, 2).mean(axis=1)
    assert not np.allclose(probs[0], averaged_probabilities[0])  # not the same thing: the paper averages logits


def test_two_way_vote_tie_goes_to_the_higher_mean_probability() -> None:
    ranking = rank(members([0.6, 0.3, 0.1], [0.2, 0.7, 0.1]), top_k=3)[0]
    # class 0 and class 1 have one vote each; class 1's mean (0.5) beats class 0's (0.4)
    assert ranking.indices.tolist() == [1, 0, 2]
    assert ranking.votes.tolist() == [1, 1, 0]
    np.testing.assert_allclose(ranking.scores, [0.5, 0.4, 0.1], rtol=1e-6)


def test_votes_outrank_mean_probability() -> None:
    probs = members([0.45, 0.40, 0.15], [0.45, 0.40, 0.15], [0.01, 0.98, 0.01])
    vote = rank(probs, top_k=3, strategy="vote")[0]
    mean = rank(probs, top_k=3, strategy="mean")[0]
    assert vote.indices.tolist() == [0, 1, 2] and vote.votes.tolist() == [2, 1, 0]
    assert mean.indices.tolist() == [1, 0, 2]
    assert predict_top1(probs, "vote").tolist() == [0] and predict_top1(probs, "mean").tolist() == [1]


def test_rest_of_top_k_by_votes_then_mean() -> None:
    probs = members(
        [0.30, 0.05, 0.25, 0.20, 0.20],
        [0.05, 0.30, 0.25, 0.20, 0.20],
        [0.05, 0.30, 0.25, 0.20, 0.20],
        [0.20, 0.05, 0.25, 0.30, 0.20],
    )
    ranking = rank(probs, top_k=5)[0]
    # votes: class 1 -> 2, classes 0 and 3 -> 1 each (mean .15 vs .225), class 2 and 4 -> 0 (mean .25 vs .2)
    assert ranking.indices.tolist() == [1, 3, 0, 2, 4]
    assert ranking.votes.tolist() == [2, 1, 1, 0, 0]


def test_a_voted_class_outside_the_mean_top_k_still_wins() -> None:
    n_classes = 50
    confident = np.full(n_classes, 0.5 / (n_classes - 1))
    confident[49] = 0.5
    spread = np.linspace(1.0, 2.0, n_classes)
    spread /= spread.sum()
    probs = np.stack([confident, confident, spread, spread, spread])[:, None, :].astype(np.float32)
    ranking = rank(probs, top_k=1)[0]
    # class 49 has 5 votes: two confident members pick it and it is the spread members' top-1 too
    assert ranking.indices.tolist() == [49]
    tied = np.stack([confident, np.roll(confident, -1)])[:, None, :].astype(np.float32)
    assert rank(tied, top_k=2)[0].votes.tolist() == [1, 1]


def test_batches_rank_each_image_independently_and_top_k_is_capped() -> None:
    probs = np.array(
        [
            [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
            [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
        ],
        dtype=np.float32,
    )
    first, second = rank(probs, top_k=10)
    assert first.indices.tolist() == [0, 1, 2] and first.votes.tolist() == [2, 0, 0]
    assert second.indices.tolist() == [2, 1, 0]  # votes 1-1 for classes 2 and 1; class 2's mean .55 wins
    assert second.votes.tolist() == [1, 1, 0]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        rank(members([0.5, 0.5]), top_k=1, strategy="majority")  # type: ignore[arg-type]


def brute_force_vote(member_probs: np.ndarray, top_k: int) -> list[list[int]]:
    """The voting rule spelled out over every class: most votes first, then highest mean probability."""
    n_members, batch, n_classes = member_probs.shape
    mean = member_probs.mean(axis=0)
    result = []
    for image in range(batch):
        votes = np.bincount(member_probs[:, image].argmax(axis=1), minlength=n_classes)
        result.append(np.lexsort((-mean[image], -votes))[:top_k].tolist())
    return result


@pytest.mark.parametrize(("n_members", "n_classes"), [(3, 10), (5, 7), (2, 1000)])
def test_rank_equals_the_rule_applied_to_every_class(n_members, n_classes) -> None:
    probs = softmax(np.random.default_rng(n_classes).normal(size=(n_members, 16, n_classes)) * 2)
    top_k = min(5, n_classes)
    assert [ranking.indices.tolist() for ranking in rank(probs, top_k)] == brute_force_vote(probs, top_k)


def test_fifty_thousand_classes_stay_cheap() -> None:
    probs = softmax(np.random.default_rng(0).normal(size=(3, 8, 50_000)).astype(np.float32) * 3)
    started = time.perf_counter()
    rankings = rank(probs, top_k=5)
    assert time.perf_counter() - started < 2.0
    assert [ranking.indices.tolist() for ranking in rankings] == brute_force_vote(probs, 5)


@pytest.mark.parametrize("count", [1, 5, 12])
def test_top_indices_equal_a_stable_full_sort_ties_included(count) -> None:
    rng = np.random.default_rng(count)
    values = rng.integers(0, 6, size=(20, 12)).astype(np.float32)  # many ties, at the cut too
    values[0] = 1.0  # every value tied
    assert top_indices(values, count).tolist() == np.argsort(-values, axis=1, kind="stable")[:, :count].tolist()
    logits = rng.normal(size=(4, 50_000)).astype(np.float32)
    assert top_indices(logits, count).tolist() == np.argsort(-logits, axis=1, kind="stable")[:, :count].tolist()
