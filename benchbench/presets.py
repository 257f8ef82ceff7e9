"""Named certification protocols. Flags given to `bench run` override a preset's values."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on 2 CPU cores for every built-in purifier; for trying things, not for papers.
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=16, n=128, alpha=0.001,
                  num_images=30, skip=None, batch_size=512, seed=0),
    # Cohen et al. / Carlini et al. protocol: 500 test images at a fixed stride (the whole test set when it
    # has fewer, as digits' 450), n0 = 100, n = 10,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0}.
    "paper": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0),
}
