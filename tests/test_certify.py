"""Certification maths against independent references (scipy's exact binomial CI, a root-find of the
binomial tail, and the closed-form smoothed radius of a linear classifier)."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom, binomtest, norm

from benchbench.smoothing.certify import (
    ABSTAIN,
    NOISE_BLOCK,
    certify,
    check_protocol,
    clopper_pearson_lower,
    noisy_batches,
    predict,
    sample_counts,
)
from benchbench.errors import InvalidArgument


@pytest.mark.parametrize("k,n,alpha", [(1, 1, 0.05), (7, 10, 0.05), (990, 1000, 0.001), (10_000, 10_000, 0.001),
                                       (5_123, 10_000, 0.01), (3, 100, 0.2)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # A two-sided exact interval at confidence 1 − 2α has the one-sided level-α bound as its lower end.
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k,n,alpha", [(7, 10, 0.05), (990, 1000, 0.001), (51, 100, 0.001), (10_000, 10_000, 0.001)])
def test_clopper_pearson_is_where_the_binomial_tail_equals_alpha(k, n, alpha):
    # Definition: the p with P(Binomial(n, p) >= k) = α.
    p = brentq(lambda p: binom.sf(k - 1, n, p) - alpha, 1e-12, 1 - 1e-15, xtol=1e-14)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(p, rel=1e-7)


def test_clopper_pearson_edge_cases():
    assert clopper_pearson_lower(0, 50, 0.001) == 0.0
    # All n successes: the bound is α^(1/n).
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    with pytest.raises(InvalidArgument):
        clopper_pearson_lower(5, 4, 0.1)


def linear_classifier(w: torch.Tensor, b: float):
    """f(x) = 1 if w·x > b else 0; its Gaussian-smoothed version has P(class 1) = Φ((w·x − b)/(σ‖w‖))."""

    def classify(batch: torch.Tensor) -> torch.Tensor:
        return ((batch.flatten(1) @ w.flatten()) > b).long()

    return classify


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_certified_radius_of_a_linear_classifier_matches_the_closed_form(sigma):
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    x = torch.randn(1, 4, 4)
    b = float((w * x).sum()) - 0.4 * float(w.norm())  # x lies 0.4 from the decision boundary, on class 1
    distance = (float((w * x).sum()) - b) / float(w.norm())
    p_true = norm.cdf(distance / sigma)
    n = 40_000
    cert = certify(linear_classifier(w, b), x, sigma=sigma, n0=100, n=n, alpha=0.001, batch_size=4096,
                   num_classes=2, generator=torch.Generator().manual_seed(1))
    assert cert.prediction == 1
    # The certificate is a lower bound (true with prob. ≥ 1 − α) and, with 40k samples, a tight one.
    assert cert.radius <= distance
    slack = 6 * math.sqrt(p_true * (1 - p_true) / n)
    assert cert.radius >= sigma * norm.ppf(p_true - slack)
    assert cert.pa_lower <= p_true
    assert cert.radius == pytest.approx(sigma * norm.ppf(cert.pa_lower))
    assert cert.n0 == 100 and cert.n == n and cert.count_top == cert.counts_estimation[1]


def test_abstains_when_the_top_class_is_not_a_majority():
    # Class decided by the sign of the noise in one pixel: P = 1/2 for each class.
    def coin(batch):
        return (batch[:, 0, 0, 0] > 0).long()

    cert = certify(coin, torch.zeros(1, 2, 2), sigma=0.5, n0=50, n=2000, alpha=0.001, batch_size=300,
                   num_classes=2, generator=torch.Generator().manual_seed(0))
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.pa_lower < 0.5
    assert predict(coin, torch.zeros(1, 2, 2), sigma=0.5, n=2000, alpha=0.001, batch_size=300, num_classes=2,
                   generator=torch.Generator().manual_seed(0)) == ABSTAIN


def test_predict_returns_the_class_the_exact_binomial_test_supports():
    w, x = torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.3)
    classify = linear_classifier(w, 0.0)
    gen = torch.Generator().manual_seed(3)
    counts = sample_counts(classify, x, 500, sigma=0.5, batch_size=128, num_classes=2, generator=gen)
    expected = 1 if binomtest(int(counts.max()), int(counts.sum()), 0.5).pvalue <= 0.01 else ABSTAIN
    got = predict(classify, x, sigma=0.5, n=500, alpha=0.01, batch_size=64, num_classes=2,
                  generator=torch.Generator().manual_seed(3))
    assert got == expected == 1


def test_noise_does_not_depend_on_batch_size_and_selection_differs_from_estimation():
    x = torch.zeros(1, 3, 3)
    seen = {}
    for batch_size in (1, 7, NOISE_BLOCK, 1000):
        gen = torch.Generator().manual_seed(42)
        first = torch.cat(list(noisy_batches(x, 150, sigma=1.0, batch_size=batch_size, generator=gen)))
        second = torch.cat(list(noisy_batches(x, 150, sigma=1.0, batch_size=batch_size, generator=gen)))
        assert first.shape == (150, 1, 3, 3)
        seen[batch_size] = (first, second)
    for first, second in seen.values():
        assert torch.equal(first, seen[1][0]) and torch.equal(second, seen[1][1])
        assert not torch.allclose(first, second)  # the n samples are fresh draws, not the n0 ones again
    # The noise has the requested scale.
    gen = torch.Generator().manual_seed(0)
    big = torch.cat(list(noisy_batches(x, 4000, sigma=0.5, batch_size=999, generator=gen)))
    assert big.std().item() == pytest.approx(0.5, rel=0.02)


def test_certificate_does_not_depend_on_batch_size():
    w, x = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0)), torch.rand(1, 3, 3)
    certs = [certify(linear_classifier(w, 0.1), x, sigma=0.5, n0=20, n=300, alpha=0.01, batch_size=bs,
                     num_classes=2, generator=torch.Generator().manual_seed(9)) for bs in (3, 64, 500)]
    for cert in certs[1:]:
        assert cert.radius == certs[0].radius
        assert np.array_equal(cert.counts_estimation, certs[0].counts_estimation)


@pytest.mark.parametrize("kwargs", [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=float("nan")),
                                    dict(sigma=float("inf")), dict(sigma=0.5, n0=0), dict(sigma=0.5, n=-3),
                                    dict(sigma=0.5, alpha=0.0), dict(sigma=0.5, alpha=1.0)])
def test_bad_protocol_values_are_rejected(kwargs):
    with pytest.raises(InvalidArgument):
        check_protocol(**kwargs)


def test_classifier_returning_out_of_range_labels_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        sample_counts(lambda b: torch.full((len(b),), 5), torch.zeros(1, 2, 2), 10, sigma=0.1, batch_size=4,
                      num_classes=3)
