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
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.special import betaincinv
from scipy.stats import binomtest, norm

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
    # scipy.special.betaincinv is the routine scipy.stats.beta.ppf evaluates, without the distribution
    # wrapper's argument handling: the same values (0 differences in 7,248 (k, n, α) tried), ~300× faster,
    # which a sequential rule deciding at every look of every image can use.
    return float(betaincinv(k, n - k + 1, alpha))


def _randn(generator: Generator | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if isinstance(generator, NoiseStream):
        return generator.randn(shape).to(dtype)  # drawn in float32 whatever x's dtype
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


class NoisyCopies:
    """The ``num`` noisy copies x + δ, δ ~ N(0, σ²I), of one phase of CERTIFY (the n0 selection copies or
    the n estimation copies), handed out in order, any number at a time.

    The noise is drawn lazily on the generator's device (the CPU when it is None) in fixed blocks of
    ``NOISE_BLOCK`` samples (the last one shorter), then moved to x's device: how the copies are taken
    (batch size, looks of a sequential rule) and the device do not change their values, so the first m
    copies are the same whoever takes them.
    """

    def __init__(self, x: torch.Tensor, num: int, *, sigma: float, generator: Generator | None = None):
        self.x, self.num, self.sigma, self.generator = x, int(num), sigma, generator
        self._pending: torch.Tensor | None = None
        self._drawn = 0  # noise samples drawn from the generator
        self.taken = 0  # copies handed out

    @property
    def remaining(self) -> int:
        """Copies not handed out yet."""
        return self.num - self.taken

    def take(self, m: int) -> torch.Tensor:
        """The next ``m`` copies (at most :attr:`remaining`), shape (m, *x.shape)."""
        if not 0 <= m <= self.remaining:
            raise InvalidArgument(f"cannot take {m} noisy copies; {self.remaining} remain")
        blocks = [] if self._pending is None else [self._pending]
        have = 0 if self._pending is None else len(self._pending)
        while have < m and self._drawn < self.num:
            k = min(NOISE_BLOCK, self.num - self._drawn)
            blocks.append(_randn(self.generator, (k, *self.x.shape), self.x.dtype))
            have += k
            self._drawn += k
        eps = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        self._pending = eps[m:]
        self.taken += m
        return self.x.unsqueeze(0) + self.sigma * eps[:m].to(self.x.device)


def noisy_batches(
    x: torch.Tensor, num: int, *, sigma: float, batch_size: int, generator: Generator | None = None
) -> Iterator[torch.Tensor]:
    """Yield ``num`` copies of x + δ, δ ~ N(0, σ²I), in batches of at most ``batch_size``: a
    :class:`NoisyCopies` taken a batch at a time (its values do not depend on the batch size or device)."""
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    stream = NoisyCopies(x, num, sigma=sigma, generator=generator)
    while stream.remaining:
        yield stream.take(min(batch_size, stream.remaining))


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
        counts += _counts(classify, batch, num_classes)
    return counts


def _counts(classify: Classify, batch: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class counts of ``classify``'s labels on one batch, the labels checked."""
    labels = torch.as_tensor(classify(batch)).reshape(-1).to("cpu", torch.int64)
    if len(labels) != len(batch):
        raise ValueError(f"classify returned {len(labels)} labels for a batch of {len(batch)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"classify returned a label outside [0, {num_classes})")
    return torch.bincount(labels, minlength=num_classes).numpy()


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


# --- sequential certification at a radius grid ----------------------------------------------------------

CERTIFY_MODES = ("fixed", "sequential")
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
FIRST_LOOK = 100  # estimation samples at the first look of the default schedule, doubling after it


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper confidence bound on p from k successes in n trials: the
    1 − α quantile of Beta(k + 1, n − k); 1 when k = n."""
    if not 0 <= k <= n:
        raise InvalidArgument(f"need 0 <= k <= n, got k={k}, n={n}")
    if k == n:
        return 1.0
    return float(betaincinv(k + 1, n - k, 1 - alpha))


def check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    """The radius grid sorted, or InvalidArgument unless it is non-empty, finite, ≥ 0 and free of repeats."""
    values = tuple(float(r) for r in radii)
    if not values:
        raise InvalidArgument("the radius grid is empty")
    if not all(math.isfinite(r) and r >= 0 for r in values):
        raise InvalidArgument(f"radii must be finite numbers >= 0, got {', '.join(f'{r:g}' for r in values)}")
    if len(set(values)) != len(values):
        raise InvalidArgument(f"a radius is listed twice: {', '.join(f'{r:g}' for r in values)}")
    return tuple(sorted(values))


def doubling_looks(n: int, first: int = FIRST_LOOK) -> tuple[int, ...]:
    """Estimation sample counts at which a sequential rule looks: first, 2·first, 4·first, … while below
    n, then n (just (n,) when n ≤ first). For n = 10,000: 100, 200, …, 6,400, 10,000 (K = 8 looks)."""
    check_protocol(sigma=1.0, n=n)
    if first < 1:
        raise InvalidArgument(f"the first look must be >= 1 sample, got {first}")
    looks = []
    m = first
    while m < n:
        looks.append(m)
        m *= 2
    return (*looks, n)


def _radius_at(p: float, sigma: float) -> float:
    """The radius a probability bound p certifies (σ·Φ⁻¹(p)), −∞ below ½ (no radius, not even 0)."""
    return float(sigma * norm.ppf(p)) if p >= 0.5 else -math.inf


@dataclass(frozen=True)
class SequentialRule:
    """When to stop drawing estimation samples, for certified accuracy at a fixed radius grid.

    After the n0 selection samples have picked c_A, the estimation samples come in looks: after ``looks[k]``
    samples (cumulative; the last look is the protocol's n), with n_A of them on c_A, the rule computes the
    one-sided Clopper–Pearson bounds L_k and U_k on p_A = P(f(x + δ) = c_A), each at level α/K (K =
    ``len(looks)``). A grid radius r (threshold Φ(r/σ); ½ for r = 0) is *decided* when it is

    * certified: L_k ≥ Φ(r/σ), i.e. the certificate at this look already reaches r;
    * refuted: U_k < Φ(r/σ), so the fixed protocol would very likely not reach r either; or
    * out of reach: even if every remaining sample up to n gave c_A, the bound at n would stay below Φ(r/σ).

    The rule stops at the first look where every grid radius is decided (at the last look in any case) and
    reports Cohen et al.'s certificate from that look's L_k: abstain when L_k < ½, else R = σ·Φ⁻¹(L_k).

    **Guarantee.** For each image, P(the reported certificate is wrong) ≤ α whatever the stopping rule:
    the certificate is wrong only if L_k > p_A at the look k where the rule stopped, and
    P(∃k: L_k > p_A) ≤ Σ_k P(L_k > p_A) ≤ K·α/K = α (Bonferroni over the K looks; each L_k is an exact
    Clopper–Pearson bound, Clopper & Pearson 1934). The stopping rule and the upper bounds only decide
    *when* to stop; they never enter the certificate, so they need no error budget of their own.

    **Why a union bound and not a time-uniform confidence sequence** (Howard, Ramdas, McAuliffe & Sekhon,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), 2021): a
    confidence sequence pays for validity at every sample size, but this rule only looks K ≈ log2(n/100)
    times. At α = 0.001 the exact bound at α/8 is the tighter one at every count tried (Robbins'
    beta-binomial mixture with a Beta(½, ½) prior as the confidence sequence): 9,900 of 10,000 gives 0.98583 vs
    0.98439, 7,000 of 10,000 0.68299 vs 0.67749, 198 of 200 0.93361 vs 0.92294. The price against the fixed
    protocol's bound at α is small (0.98583 vs 0.98653 at 9,900 of 10,000).

    Since the certificate comes from the final bound, a sequential run's radii (and so its ACR) stop growing
    once the largest grid radius is certified: ACR is capped by the grid. Accuracy at a grid radius is the
    quantity to compare.
    """

    radii: tuple[float, ...] = DEFAULT_RADII
    looks: tuple[int, ...] = (FIRST_LOOK,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "radii", check_radii(self.radii))
        looks = tuple(int(m) for m in self.looks)
        if not looks or looks[0] < 1 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise InvalidArgument(f"looks must be increasing sample counts >= 1, got {looks}")
        object.__setattr__(self, "looks", looks)

    @classmethod
    def for_protocol(cls, n: int, radii: Sequence[float] = DEFAULT_RADII, first: int = FIRST_LOOK) -> "SequentialRule":
        """The rule for a protocol of n estimation samples: the grid ``radii`` and :func:`doubling_looks`."""
        return cls(tuple(radii), doubling_looks(n, first))

    @property
    def n(self) -> int:
        """The most estimation samples the rule draws: its last look."""
        return self.looks[-1]

    def look_alpha(self, alpha: float) -> float:
        """The level of each look's bounds: α/K."""
        return alpha / len(self.looks)

    def decided(self, count_top: int, m: int, *, sigma: float, alpha: float) -> bool:
        """True when, with ``count_top`` of the first ``m`` estimation samples on c_A, every grid radius is
        certified, refuted or out of reach (see the class docstring); always True at the last look."""
        if m >= self.n:
            return True
        a = self.look_alpha(alpha)
        certified = _radius_at(clopper_pearson_lower(count_top, m, a), sigma)
        possible = _radius_at(clopper_pearson_upper(count_top, m, a), sigma)
        reachable = _radius_at(clopper_pearson_lower(count_top + self.n - m, self.n, a), sigma)
        return all(r <= certified or r > possible or r > reachable for r in self.radii)

    def certificate(self, counts_selection: np.ndarray, counts_estimation: np.ndarray, *, sigma: float,
                    alpha: float) -> Certificate:
        """The certificate at the look where the rule stopped: :func:`certificate_from_counts` at α/K."""
        return certificate_from_counts(counts_selection, counts_estimation, sigma=sigma, alpha=self.look_alpha(alpha))


def certify_sequential(
    classify: Classify,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int,
    alpha: float,
    rule: SequentialRule,
    batch_size: int,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> Certificate:
    """CERTIFY with a sequential stopping rule for one input x (no batch dimension).

    The same n0 selection samples as :func:`certify` pick c_A; estimation samples are then drawn look by
    look (``rule.looks``) until :meth:`SequentialRule.decided`, and the certificate comes from the bound at
    that look (:meth:`SequentialRule.certificate`): wrong with probability at most α. The first m estimation
    samples are exactly :func:`certify`'s first m with the same generator (one :class:`NoisyCopies` per
    phase), so the two modes are paired. ``Certificate.n`` is the number of estimation samples used.
    """
    check_protocol(sigma=sigma, n0=n0, n=rule.n, alpha=alpha)
    kwargs = dict(sigma=sigma, batch_size=batch_size, num_classes=num_classes, generator=generator)
    counts_selection = sample_counts(classify, x, n0, **kwargs)
    c_a = int(counts_selection.argmax())
    counts_estimation = np.zeros(num_classes, dtype=np.int64)
    stream = NoisyCopies(x, rule.n, sigma=sigma, generator=generator)
    for look in rule.looks:
        while stream.taken < look:
            counts_estimation += _counts(classify, stream.take(min(batch_size, look - stream.taken)), num_classes)
        if rule.decided(int(counts_estimation[c_a]), look, sigma=sigma, alpha=alpha):
            break
    return rule.certificate(counts_selection, counts_estimation, sigma=sigma, alpha=alpha)


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
