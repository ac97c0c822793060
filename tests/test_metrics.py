"""The diagnostics' maths against cases whose answers are known by hand: CKA invariances and independence,
streaming equal to the one-shot and Gram-matrix forms, ECE of calibrated and of constant predictors."""

from __future__ import annotations

import math

import pytest
import torch

from pekd.metrics import Calibration, LinearCKA


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    return LinearCKA().update(x, y).value()


def one_shot(x: torch.Tensor, y: torch.Tensor) -> float:
    """The feature-covariance form on explicitly centred matrices."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((y.T @ x).square().sum() / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def gram_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XX^T, L = YY^T, H = I - 11^T/n."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, lm = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * lm).sum() / torch.sqrt((k * k).sum() * (lm * lm).sum()))


def test_cka_of_a_set_with_itself_is_one() -> None:
    x = torch.randn(300, 12, generator=gen())
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_rotation_scale_and_shift() -> None:
    x = torch.randn(400, 10, generator=gen(1), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen(2), dtype=torch.float64))
    assert torch.allclose(q.T @ q, torch.eye(10, dtype=torch.float64), atol=1e-12)
    assert cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 2 * x + 3) == pytest.approx(1.0, abs=1e-10)


def test_cka_of_independent_features_is_near_zero() -> None:
    # E[CKA] ~ d/n for independent Gaussians: 8/5000 here
    x, y = torch.randn(5000, 8, generator=gen(3)), torch.randn(5000, 8, generator=gen(4))
    assert 0 <= cka(x, y) < 0.02


def test_streaming_over_uneven_batches_equals_one_shot_and_gram_forms() -> None:
    # features with large means (like ReLU outputs) and different widths on the two sides
    x = torch.randn(97, 6, generator=gen(5)) * 0.5 + 40
    y = torch.relu(x @ torch.randn(6, 9, generator=gen(6)) + torch.randn(97, 9, generator=gen(7)))
    acc = LinearCKA()
    for lo, hi in [(0, 1), (1, 30), (30, 31), (31, 80), (80, 97)]:
        acc.update(x[lo:hi], y[lo:hi])
    assert acc.n == 97
    reference = gram_hsic(x, y)
    assert 0.05 < reference < 0.999
    assert one_shot(x, y) == pytest.approx(reference, rel=1e-9)
    assert acc.value() == pytest.approx(reference, rel=1e-9)


def test_cka_is_undefined_for_a_constant_feature() -> None:
    assert math.isnan(cka(torch.ones(20, 3), torch.randn(20, 4, generator=gen(8))))
    assert math.isnan(LinearCKA().value())
    with pytest.raises(ValueError, match="same samples"):
        LinearCKA().update(torch.zeros(3, 2), torch.zeros(4, 2))


def test_ece_of_a_calibrated_predictor_is_near_zero() -> None:
    n = 200_000
    conf = 0.1 + 0.9 * torch.rand(n, generator=gen(9), dtype=torch.float64)
    correct = torch.rand(n, generator=gen(10), dtype=torch.float64) < conf
    cal = Calibration()
    for lo in range(0, n, 30_001):
        cal.update_confidences(conf[lo:lo + 30_001], correct[lo:lo + 30_001])
    assert cal.n == n
    assert cal.ece() < 1.0
    assert abs(cal.overconfidence()) < 0.5
    assert cal.top1() == pytest.approx(100 * correct.double().mean().item())


def test_ece_of_an_always_right_predictor_at_confidence_07_is_30() -> None:
    cal = Calibration().update_confidences(torch.full((1000,), 0.7), torch.ones(1000, dtype=torch.bool))
    assert cal.ece() == pytest.approx(30.0, abs=1e-4)
    assert cal.overconfidence() == pytest.approx(-30.0, abs=1e-4)  # under-confident: claims 70%, gets 100%
    assert cal.top1() == 100.0


def test_overconfidence_sign_and_bins_from_logits() -> None:
    # two classes, logits giving confidence sigmoid(2) = 0.881 on class 0; half the labels are class 0
    logits = torch.tensor([[2.0, 0.0]]).repeat(10, 1)
    labels = torch.tensor([0, 1] * 5)
    cal = Calibration().update(logits, labels)
    p = 1 / (1 + math.exp(-2))
    assert cal.top1() == pytest.approx(50.0)
    assert cal.overconfidence() == pytest.approx(100 * (p - 0.5), abs=1e-4)  # over-confident: positive
    assert cal.ece() == pytest.approx(100 * (p - 0.5), abs=1e-4)
    # the ends land in the first and last bins (no index out of range): confidence 0 wrong, 1 right is calibrated
    ends = Calibration().update_confidences(torch.tensor([0.0, 1.0]), torch.tensor([False, True]))
    assert ends.ece() == 0.0 and ends.n == 2
    assert math.isnan(Calibration().ece())
