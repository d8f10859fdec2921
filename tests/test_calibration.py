"""Temperature scaling, ECE, average-k thresholds, and the TTA set export ships (chosen on validation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.contract.calibration import (
    Calibration,
    average_k_threshold,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    label_set_sizes,
    negative_log_likelihood,
)
from app.contract.ranking import crop_average_probabilities, rank, softmax
from training.validation_choice import TtaScore, candidate_sets, choose_tta, score_tta_sets


def overconfident(n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), logits 4z: calibrated at T = 4, far too sure of themselves at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    cumulative = softmax(z).astype(np.float64).cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), classes - 1)
    return z * 4.0, labels


def test_the_fitted_temperature_minimises_the_nll_and_lowers_the_ece() -> None:
    logits, labels = overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.1)
    best = negative_log_likelihood(logits, labels, temperature)
    for other in (temperature * 0.9, temperature * 1.1, 1.0):
        assert best < negative_log_likelihood(logits, labels, other)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    assert before > 0.15 and after < 0.05


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins (15): 0.9 -> bin 13 (accuracy 0.5, confidence 0.9); 0.6 -> bin 9 (1, 0.6); 0.7 -> bin 10 (1, 0.7)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)


def test_average_k_sets_have_mean_size_k_and_vary_per_image() -> None:
    logits, labels = overconfident(seed=1)
    probs = softmax(logits / fit_temperature(logits, labels))
    for k in (1, 2, 3, 5):
        sizes = (probs >= average_k_threshold(probs, k)).sum(axis=1)
        assert sizes.mean() == pytest.approx(k, abs=0.01)
        assert len(np.unique(sizes)) > 1  # adaptive: sure images get fewer labels, unsure ones more
    assert label_set_sizes(np.array([[0.5, 0.5], [0.2, 0.8]]), 0.9).tolist() == [1, 1]  # never empty


def test_calibrate_records_everything_and_round_trips() -> None:
    logits, labels = overconfident(seed=2)
    record = calibrate(logits, labels)
    assert record.ece_after < record.ece_before and record.validation_images == len(labels)
    assert len(record.average_k_thresholds) == 5 and record.average_k_thresholds == sorted(record.average_k_thresholds, reverse=True)
    assert record.average_k_coverage == sorted(record.average_k_coverage) and record.average_k_coverage[-1] > 0.9
    assert record.threshold(3) == record.average_k_thresholds[2] and record.threshold(6) is None
    assert Calibration.from_dict(json.loads(json.dumps(record.__dict__))) == record
    with pytest.raises(ValueError, match="temperature"):
        Calibration(0.0, 0.1, 0.1, 10)


def test_a_temperature_keeps_a_members_ranking_and_changes_its_probabilities() -> None:
    logits, _ = overconfident(n=50, seed=3)
    plain = crop_average_probabilities(logits, 1)
    cooled = crop_average_probabilities(logits, 1, temperature=3.0)
    assert not np.allclose(plain, cooled)
    for a, b in zip(rank(plain[None], 5), rank(cooled[None], 5)):
        assert a.indices.tolist() == b.indices.tolist()


def test_every_set_of_sizes_is_a_candidate() -> None:
    assert candidate_sets((28, 32, 36)) == [(28,), (32,), (36,), (28, 32), (28, 36), (32, 36), (28, 32, 36)]


def test_a_tta_set_worse_than_the_single_crop_is_never_shipped() -> None:
    """Constructed: the 28-px crop is always right, the larger sizes confidently wrong, so any average is worse."""
    labels = np.arange(12) % 3
    right = np.eye(3)[labels] * 2.0
    wrong = np.eye(3)[(labels + 1) % 3] * 3.0
    logits = np.stack([right, wrong, wrong])
    scores = score_tta_sets(logits, labels, (28, 32, 36))
    assert {s.sizes: s.error for s in scores}[(28, 32, 36)] == 1.0 and {s.sizes: s.error for s in scores}[(28,)] == 0.0
    assert choose_tta(scores, 28) == (28,)


def test_the_best_set_ships_and_ties_go_to_fewer_sizes() -> None:
    scores = [TtaScore((28,), 0.20), TtaScore((32,), 0.22), TtaScore((28, 32), 0.18), TtaScore((28, 32, 36), 0.18)]
    assert choose_tta(scores, 28) == (28, 32)  # the best single size first: what a request without TTA uses
    scores = [TtaScore((28,), 0.22), TtaScore((32,), 0.20), TtaScore((28, 32), 0.19)]
    assert choose_tta(scores, 28) == (32, 28)
    assert choose_tta([TtaScore((28,), 0.2), TtaScore((32,), 0.2)], 28) == (28,)  # a tie goes to the single crop


def test_validation_logits_see_jpeg_files_as_the_service_decodes_them(tmp_path) -> None:
    """A large JPEG is decoded at the DCT scale of the largest candidate size, as a TTA request is served; a
    full-scale decode (what the TTA choice once scored) gives other crops."""
    import io

    from PIL import Image

    from app.contract.preprocess import PreprocessConfig, decode_image, tta_crops
    from training.image_sets import DEFAULT_MAX_PIXELS, FileImageSet
    from training.validation_choice import validation_logits

    rng = np.random.default_rng(0)
    paths = []
    for index in range(2):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        paths.append(tmp_path / f"{index}.jpg")
        paths[-1].write_bytes(buffer.getvalue())
    config, sizes = PreprocessConfig(28, 3, (0.5,) * 3, (0.25,) * 3, "bilinear", (28, 32, 36)), (28, 32, 36)
    seen: list[np.ndarray] = []

    def logits(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return batch.reshape(len(batch), -1)[:, :4]

    validation_logits(logits, FileImageSet(paths, np.array([0, 1]), tmp_path), config, sizes)
    as_served = [tta_crops(decode_image(path.read_bytes(), 3, DEFAULT_MAX_PIXELS, max(sizes)), config, sizes) for path in paths]
    full_scale = [tta_crops(decode_image(path.read_bytes(), 3, DEFAULT_MAX_PIXELS), config, sizes) for path in paths]
    np.testing.assert_array_equal(seen[0], np.concatenate(as_served))
    assert not np.array_equal(seen[0], np.concatenate(full_scale))
