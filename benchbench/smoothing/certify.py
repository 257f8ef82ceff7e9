"""Randomized-smoothing certification: CERTIFY and PREDICT of Cohen, Rosenfeld & Kolter (ICML 2019).

Pure functions, no I/O. The smoothed classifier is g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I).

* :func:`certify` returns, with probability at least 1 − α over the sampled noise, either an abstention or
  a class c_A and a radius R such that g(x + e) = c_A for every ‖e‖₂ < R (Cohen et al., Theorem 1).
* :func:`predict` returns g(x), or abstains; it returns a wrong class with probability at most α.

σ, the radius and x share one scale: the image scale the classifier is fed (x in [0, 1] in benchbench).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from benchbench.errors import InvalidArgument
from benchbench.smoothing.noise import NoiseStream

ABSTAIN = -1

# Noise is drawn in blocks of this many samples whatever the batch size, so that the values of the noise
# (and so every count and certificate) depend on the generator's seed alone, not on how it is batched.
NOISE_BLOCK = 64

Generator = torch.Generator | NoiseStream
"""Where noise comes from: a run's :class:`NoiseStream` (:func:`benchbench.smoothing.noise.noise_generator`),
or any torch generator."""

Classify = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of noisy images, shape (B, *x.shape), to integer labels of shape (B,)."""


@dataclass(frozen=True)
class Certificate:
    """What :func:`certify` found for one input.

    prediction: the certified class, or ``ABSTAIN`` (−1).
    radius: the certified ℓ2 radius in the scale of x and σ; 0.0 when abstaining.
    pa_lower: the one-sided (1 − α) Clopper–Pearson lower bound on P(f(x+δ) = c_A).
    counts_selection: per-class counts over the n0 selection samples (used only to pick c_A).
    counts_estimation: per-class counts over the n independent estimation samples.
    """

    prediction: int
    radius: float
    pa_lower: float
    counts_selection: np.ndarray
    counts_estimation: np.ndarray

    @property
    def n0(self) -> int:
        return int(self.counts_selection.sum())

    @property
    def n(self) -> int:
        return int(self.counts_estimation.sum())

    @property
    def count_top(self) -> int:
        """n_A: how many estimation samples the classifier gave c_A (0 when abstaining before selection)."""
        return 0 if self.prediction == ABSTAIN else int(self.counts_estimation[self.prediction])


def check_protocol(*, sigma: float, n0: int | None = None, n: int | None = None, alpha: float | None = None) -> None:
    """Raise :class:`InvalidArgument` unless σ > 0 is finite, n0, n ≥ 1 and 0 < α < 1."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InvalidArgument(f"sigma must be a finite number > 0, got {sigma!r}")
    for name, value in (("n0", n0), ("n", n)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise InvalidArgument(f"{name} must be an integer >= 1, got {value!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise InvalidArgument(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower confidence bound on p, from k successes in n trials.

    It is the p at which P(Binomial(n, p) ≥ k) = α, i.e. the α quantile of Beta(k, n − k + 1); 0 when k = 0.
    """
    if not 0 <= k <= n:
        raise InvalidArgument(f"need 0 <= k <= n, got k={k}, n={n}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def _randn(generator: Generator | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if isinstance(generator, NoiseStream):
        return generator.randn(shape).to(dtype)  # drawn in float32 whatever x's dtype
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def noisy_batches(
    x: torch.Tensor, num: int, *, sigma: float, batch_size: int, generator: Generator | None = None
) -> Iterator[torch.Tensor]:
    """Yield ``num`` copies of x + δ, δ ~ N(0, σ²I), in batches of at most ``batch_size``.

    The noise is drawn on the generator's device (the CPU when it is None) in fixed blocks of
    ``NOISE_BLOCK`` samples, then moved to x's device: batch size and device do not change its values.
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    pending: torch.Tensor | None = None
    drawn = 0
    while drawn < num or (pending is not None and len(pending)):
        blocks = [] if pending is None else [pending]
        have = 0 if pending is None else len(pending)
        while have < batch_size and drawn < num:
            k = min(NOISE_BLOCK, num - drawn)
            blocks.append(_randn(generator, (k, *x.shape), x.dtype))
            have += k
            drawn += k
        eps = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        take = min(batch_size, len(eps))
        pending = eps[take:]
        yield x.unsqueeze(0) + sigma * eps[:take].to(x.device)


def certification_batches(
    x: torch.Tensor, *, sigma: float, n0: int, n: int, batch_size: int, generator: Generator | None = None
) -> Iterator[torch.Tensor]:
    """The n0 + n noisy copies of x that :func:`certify` draws, in its order (the n0 selection copies, then
    the n estimation copies), in batches of at most ``batch_size`` that never straddle the two phases."""
    yield from noisy_batches(x, n0, sigma=sigma, batch_size=batch_size, generator=generator)
    yield from noisy_batches(x, n, sigma=sigma, batch_size=batch_size, generator=generator)


def sample_counts(
    classify: Classify,
    x: torch.Tensor,
    num: int,
    *,
    sigma: float,
    batch_size: int,
    num_classes: int,
    generator: Generator | None = None,
) -> np.ndarray:
    """Per-class counts of ``classify`` over ``num`` noisy copies of x; shape (num_classes,), int64."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for batch in noisy_batches(x, num, sigma=sigma, batch_size=batch_size, generator=generator):
        labels = torch.as_tensor(classify(batch)).reshape(-1).to("cpu", torch.int64)
        if len(labels) != len(batch):
            raise ValueError(f"classify returned {len(labels)} labels for a batch of {len(batch)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"classify returned a label outside [0, {num_classes})")
        counts += torch.bincount(labels, minlength=num_classes).numpy()
    return counts


def certify(
    classify: Classify,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    num_classes: int,
    generator: Generator | None = None,
) -> Certificate:
    """Cohen et al.'s CERTIFY for one input x (no batch dimension).

    n0 samples select the top class c_A; n further samples, independent of the first, estimate
    p̲_A = Clopper–Pearson lower bound at level α. Abstains when p̲_A < 1/2; otherwise R = σ·Φ⁻¹(p̲_A).
    """
    check_protocol(sigma=sigma, n0=n0, n=n, alpha=alpha)
    kwargs = dict(sigma=sigma, batch_size=batch_size, num_classes=num_classes, generator=generator)
    counts_selection = sample_counts(classify, x, n0, **kwargs)
    counts_estimation = sample_counts(classify, x, n, **kwargs)
    return certificate_from_counts(counts_selection, counts_estimation, sigma=sigma, alpha=alpha)


def certificate_from_counts(counts_selection: np.ndarray, counts_estimation: np.ndarray, *, sigma: float,
                            alpha: float) -> Certificate:
    """CERTIFY's decision from its two count vectors: c_A = the top selection class (ties: the lowest);
    abstain when the Clopper–Pearson bound p̲_A on c_A's estimation count is below 1/2, else R = σ·Φ⁻¹(p̲_A).

    The two samples only have to be independent, not drawn in order, so the harness may classify them
    in any batches (even together) and decide here."""
    counts_selection = np.asarray(counts_selection)
    counts_estimation = np.asarray(counts_estimation)
    n = int(counts_estimation.sum())
    c_a = int(counts_selection.argmax())
    pa_lower = clopper_pearson_lower(int(counts_estimation[c_a]), n, alpha)
    if pa_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, pa_lower, counts_selection, counts_estimation)
    return Certificate(c_a, float(sigma * norm.ppf(pa_lower)), pa_lower, counts_selection, counts_estimation)


def predict(
    classify: Classify,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int,
    num_classes: int,
    generator: Generator | None = None,
) -> int:
    """Cohen et al.'s PREDICT: the top class if an exact two-sided binomial test of n_A vs n_B rejects
    equality at level α, else ``ABSTAIN``. Wrong with probability at most α."""
    check_protocol(sigma=sigma, n=n, alpha=alpha)
    counts = sample_counts(
        classify, x, n, sigma=sigma, batch_size=batch_size, num_classes=num_classes, generator=generator
    )
    order = np.argsort(-counts, kind="stable")
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]]) if num_classes > 1 else 0
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])
