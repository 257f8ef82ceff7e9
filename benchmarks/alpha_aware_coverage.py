"""Worst-case coverage of `bench report --alpha-aware`: every certificate CERTIFY issues is wrong, each image
gets one with the largest allowed probability α, and the report shows the σ with the most certificates.
Prints how often the bound at that σ still claims a correct certificate (promised: at most δ), beside the
former bound (m from Binomial(k, α) over the k certified images, no correction for σ).

    python benchmarks/alpha_aware_coverage.py [--images 450] [--alpha 0.001] [--delta 0.05] [--runs 20000]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import binom

from benchbench.results.report import alpha_aware_lower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=450)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n, alpha, delta = args.images, args.alpha, args.delta
    for sigmas in (1, 3):
        ks = rng.binomial(n, alpha, size=(args.runs, sigmas))  # wrong certificates: every one issued
        best = ks.argmax(axis=1)
        k = ks[np.arange(args.runs), best]
        former = np.mean(k > binom.ppf(1 - delta, np.maximum(k, 1), alpha))
        now = np.mean([alpha_aware_lower(row.tolist(), [n] * sigmas, alpha, delta)[b] > 0 for row, b in zip(ks, best)])
        print(f"{sigmas} σ, {n} images, α = {alpha:g}: a correct certificate claimed in {100 * now:.2f}% of "
              f"{args.runs} runs (promised ≤ {100 * delta:g}%); the former bound: {100 * former:.1f}%")


if __name__ == "__main__":
    main()
