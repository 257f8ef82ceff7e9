"""Named certification protocols. Flags given to `bench run` override a preset's values.

Each preset has a description naming where its numbers come from (`bench run --help` lists them).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=16, n=128, alpha=0.001,
                  num_images=30, skip=None, batch_size=512, seed=0),
    "paper": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0),
    "cohen": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=100_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0),
    "reference": dict(dataset="digits", sigmas=(0.25, 0.5), n0=100, n=10_000, alpha=0.001,
                      num_images=450, skip=None, batch_size=1000, seed=0),
}

DESCRIPTIONS: dict[str, str] = {
    "quick": "a few minutes on 2 CPU cores for every built-in purifier: for trying things, not for citing "
             "(30 images, n0 = 16, n = 128, α = 0.001; the radius cap is 1.62·σ)",
    "paper": "Li et al. 2024 (Consistency Purification): 500 test images at a fixed stride (all 450 on "
             "digits), n0 = 100, n = 10,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0}",
    "cohen": "Cohen et al. 2019 and Carlini et al. 2023 (DDS): 500 test images at a fixed stride (all 450 on "
             "digits), n0 = 100, n = 100,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0}",
    "reference": "benchbench's digits reference run: all 450 test digits, σ ∈ {0.25, 0.5}, n0 = 100, "
                 "n = 10,000, α = 0.001 (radius cap 3.2·σ: 0.80 at σ = 0.25, 1.60 at σ = 0.5)",
}
