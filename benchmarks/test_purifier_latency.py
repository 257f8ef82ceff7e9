"""Latency of every registered purifier on one fixed batch: ``tox -e bench`` or
``pytest benchmarks --benchmark-only --benchmark-json=latency.json``.

The purifiers are parametrised from the registry at collection time, so an installed plugin is benchmarked
with no edit here. Each is built with its default parameters; one with a required parameter is skipped with
the reason; a missing or broken checkpoint fails. All share one ``benchmark.group``, so pytest-benchmark's
table puts them side by side, and ``extra_info["purifier"]`` holds the label ``bench plot pareto
--timings`` matches against a run's purifier labels.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchbench.data.dataset import get_dataset
from benchbench.errors import BenchError
from benchbench.registry import PurifierSpec, available_purifiers, get_purifier, purify
from benchbench.smoothing.noise import CopyNoise

BATCH = 64
SIGMA = 0.5
DEVICE = os.environ.get("BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
GROUP = f"purifier latency: {BATCH} noisy test digits at sigma={SIGMA:g} on {DEVICE}"


@pytest.fixture(scope="module")
def noisy_batch() -> torch.Tensor:
    """The first 64 test digits plus N(0, σ²I) noise from a fixed CPU generator, on the benchmark device."""
    clean = get_dataset("digits", "test").images[:BATCH]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    return (clean + SIGMA * noise).to(DEVICE)


@pytest.mark.parametrize("purifier", available_purifiers())
def test_purifier_latency(benchmark, purifier: str, noisy_batch: torch.Tensor) -> None:
    try:
        model = get_purifier(purifier, device=DEVICE, dataset="digits")
    except BenchError as exc:
        if not isinstance(exc.__cause__, TypeError):
            raise  # a missing or broken checkpoint fails
        # a plugin with a required parameter has no default configuration to time
        pytest.skip(f"{purifier} cannot be built with its defaults: {exc}")
    benchmark.group = GROUP
    benchmark.extra_info.update(
        purifier=PurifierSpec(purifier).label, batch_size=BATCH, sigma=SIGMA,
        device=torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else "cpu",
    )

    @torch.no_grad()
    def call() -> torch.Tensor:
        # A stochastic purifier's per-copy noise streams are part of what one call costs.
        out = purify(model, noisy_batch, SIGMA, CopyNoise.for_copies(0, SIGMA, 0, range(BATCH)))
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()  # time the work, not the kernel launches
        return out

    out = benchmark(call)
    assert out.shape[1:] == noisy_batch.shape[1:] and len(out) == BATCH * getattr(model, "votes", 1)
    assert torch.isfinite(out).all()
