"""Losses against values computed by hand (plain ``math`` on small tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import PAPER_LOG_ZERO, REFERENCE_LOG_ZERO, SymmetricCrossEntropy, class_balance_weights, create_loss

LN2 = math.log(2.0)


def softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(value) for value in row]
    return [value / sum(exps) for value in exps]


def hand_loss(logits: list[list[float]], targets: list[int], alpha: float, beta: float, weights: list[float] | None, log_zero: float) -> float:
    """α·Σ_i w(y_i)·(-log p_i(y_i))/B + β·Σ_i -A·(1 - p_i(y_i))/B, written out with floats."""
    total = 0.0
    for row, target in zip(logits, targets):
        p = softmax_row(row)[target]
        weight = 1.0 if weights is None else weights[target]
        total += alpha * weight * -math.log(p) + beta * -log_zero * (1 - p)
    return total / len(targets)


LOGITS = [[2.0, 1.0, 0.1], [0.5, -1.0, 3.0], [0.0, 0.0, 0.0], [-2.0, 4.0, 1.0]]
TARGETS = [0, 2, 1, 0]
COUNTS = [30, 10, 5]  # N = 45, K = 3: w = 45/90, 45/30, 45/15 = 0.5, 1.5, 3.0


def value(loss: torch.nn.Module) -> float:
    return float(loss(torch.tensor(LOGITS), torch.tensor(TARGETS)))


def test_class_balance_weights_are_n_over_k_n_k() -> None:
    assert class_balance_weights(COUNTS).tolist() == pytest.approx([0.5, 1.5, 3.0])
    assert class_balance_weights([4, 0, 4]).tolist() == pytest.approx([2 / 3, 0.0, 2 / 3])  # N/(K·n) with K = 3; an empty class gets 0


def test_two_class_bsce_literal_values() -> None:
    """Logits (0, 0): p = 1/2, so CE = ln 2 and RCE = -A/2; counts (3, 1) give w = (2/3, 2)."""
    logits, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    bsce = create_loss("bsce", [3, 1])
    expected = 0.4 * (2 / 3 * LN2 + 2 * LN2) / 2 + 0.7 * (-REFERENCE_LOG_ZERO / 2)
    assert float(bsce(logits, targets)) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(3.593297, abs=1e-6)
    paper = create_loss("bsce", [3, 1], log_zero=PAPER_LOG_ZERO)
    assert float(paper(logits, targets)) == pytest.approx(0.4 * (4 / 3) * LN2 + 0.7 * 2.0, rel=1e-6)


def test_ce_is_plain_cross_entropy() -> None:
    assert value(create_loss("ce", alpha=0.3, beta=5.0)) == pytest.approx(hand_loss(LOGITS, TARGETS, 1.0, 0.0, None, -1.0), rel=1e-6)


def test_bce_weights_a_rare_class_above_one() -> None:
    expected = hand_loss(LOGITS, TARGETS, 1.0, 0.0, [0.5, 1.5, 3.0], -1.0)
    assert value(create_loss("bce", COUNTS)) == pytest.approx(expected, rel=1e-6)
    # Reduction Σ_i w(y_i)·ℓ_i / B, not PyTorch's weighted mean Σ w·ℓ / Σ w.
    pytorch_mean = float(F.cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGETS), weight=torch.tensor([0.5, 1.5, 3.0])))
    assert pytorch_mean != pytest.approx(expected, rel=1e-3)
    weights = [0.5, 3.0, 1.5, 0.5]  # w(y_i) for TARGETS
    assert pytorch_mean * sum(weights) / len(weights) == pytest.approx(expected, rel=1e-6)


def test_sce_uses_alpha_beta_without_weights() -> None:
    expected = hand_loss(LOGITS, TARGETS, 0.4, 0.7, None, REFERENCE_LOG_ZERO)
    assert value(create_loss("sce", COUNTS)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("log_zero", [REFERENCE_LOG_ZERO, PAPER_LOG_ZERO])
def test_bsce_matches_hand_values_for_both_clamping_constants(log_zero: float) -> None:
    expected = hand_loss(LOGITS, TARGETS, 0.4, 0.7, [0.5, 1.5, 3.0], log_zero)
    assert value(create_loss("bsce", COUNTS, log_zero=log_zero)) == pytest.approx(expected, rel=1e-6)


def test_reference_constant_is_ln_1e4() -> None:
    assert REFERENCE_LOG_ZERO == pytest.approx(-9.2103404, abs=1e-6)
    with pytest.raises(ValueError):
        SymmetricCrossEntropy(log_zero=0.0)


def test_rce_gradient_raises_the_target_probability() -> None:
    rce = SymmetricCrossEntropy(alpha=0.0, beta=1.0)
    logits = torch.tensor(LOGITS, requires_grad=True)
    targets = torch.tensor(TARGETS)
    rce(logits, targets).backward()
    gradient = logits.grad
    rows = torch.arange(len(TARGETS))
    assert (gradient[rows, targets] < 0).all()  # descending raises the target logit
    mask = torch.ones_like(gradient, dtype=torch.bool)
    mask[rows, targets] = False
    assert (gradient[mask] > 0).all()  # and lowers every other logit
    before = torch.softmax(logits.detach(), dim=1)[rows, targets]
    after = torch.softmax(logits.detach() - 0.1 * gradient, dim=1)[rows, targets]
    assert (after > before).all()
    # d/dz_y of -A(1 - p_y) = A·p_y(1 - p_y) (negative, as A < 0); checked on row 2 (uniform: p = 1/3).
    assert float(gradient[2, 1]) == pytest.approx(REFERENCE_LOG_ZERO * (1 / 3) * (2 / 3) / len(TARGETS), rel=1e-5)


def test_fp32_probabilities_under_bf16_autocast_on_cpu() -> None:
    loss = create_loss("bsce", COUNTS)
    weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    features = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = features @ weights
        assert logits.dtype == torch.bfloat16
        result = loss(logits, torch.tensor(TARGETS))
    assert result.dtype == torch.float32
    reference = hand_loss(logits.float().tolist(), TARGETS, 0.4, 0.7, [0.5, 1.5, 3.0], REFERENCE_LOG_ZERO)
    assert float(result) == pytest.approx(reference, rel=1e-6)


def test_fifty_thousand_classes() -> None:
    n_classes, batch = 50_000, 16
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 500, (n_classes,), generator=generator)
    logits = torch.randn(batch, n_classes, generator=generator, requires_grad=True)
    targets = torch.randint(0, n_classes, (batch,), generator=generator)
    result = create_loss("bsce", counts.tolist())(logits, targets)
    result.backward()
    log_p = F.log_softmax(logits.detach().double(), dim=1)[torch.arange(batch), targets]
    weights = counts.sum().double() / (n_classes * counts.double())
    expected = (0.4 * weights[targets] * -log_p + 0.7 * -REFERENCE_LOG_ZERO * (1 - log_p.exp())).mean()
    assert result.item() == pytest.approx(float(expected), rel=1e-5)
    assert logits.grad.shape == (batch, n_classes) and torch.isfinite(logits.grad).all()


def test_deferred_reweighting_switches_weights_on_at_drw_epoch() -> None:
    loss = create_loss("bsce", COUNTS, drw_epoch=2)
    unweighted = hand_loss(LOGITS, TARGETS, 0.4, 0.7, None, REFERENCE_LOG_ZERO)
    weighted = hand_loss(LOGITS, TARGETS, 0.4, 0.7, [0.5, 1.5, 3.0], REFERENCE_LOG_ZERO)
    for epoch, expected in ((0, unweighted), (1, unweighted), (2, weighted), (5, weighted)):
        loss.set_epoch(epoch)
        assert value(loss) == pytest.approx(expected, rel=1e-6), epoch


def test_create_loss_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("focal", COUNTS)
    with pytest.raises(ValueError, match="class counts"):
        create_loss("bsce")
