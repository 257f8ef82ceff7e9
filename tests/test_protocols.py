"""The published protocols benchbench names: Li et al.'s nearest-level rule and the presets named for their
sources."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchbench.errors import InvalidArgument


def _karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """Karras et al.'s grid written out from the formula (descending), independent of diffusers."""
    i = np.arange(n) / (n - 1)
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_nearest_is_li_et_al_rule_and_nearest_log_the_ratio_rule_on_the_imagenet_grid():
    from benchbench.models.consistency import assumed_level, first_call, make_scheduler
    from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE

    grid = _karras(40)[:-1]  # σ_min is never chosen: f is the identity there
    sigma = 0.15
    li = grid[np.argmin(np.abs(grid - 2 * sigma))]
    log = grid[np.argmin(np.abs(np.log(grid) - math.log(2 * sigma)))]
    assert li == pytest.approx(0.2556, abs=1e-4) and log == pytest.approx(0.3489, abs=1e-4)  # the figures

    sigmas = make_scheduler(40, sigma_max=80.0).sigmas.double()
    assert DEFAULT_SIGMA_MODE == "nearest"
    assert assumed_level(sigmas, sigma, "nearest") == pytest.approx(li, rel=1e-9)
    assert assumed_level(sigmas, sigma, "nearest-log") == pytest.approx(log, rel=1e-9)
    # The purifier's first network call uses the same level, with the input untouched (no noise added).
    model = SimpleNamespace(sigmas=sigmas)
    x = torch.rand(2, 3, 4, 4)
    for mode, level in (("nearest", li), ("nearest-log", log)):
        x_in, got, k = first_call(model, x, sigma, mode)
        assert got == pytest.approx(level, rel=1e-9) and float(sigmas[k]) == got
        torch.testing.assert_close(x_in, 2 * x - 1)


def test_nearest_rules_agree_wherever_no_midpoint_lies_between_them_and_unknown_modes_are_refused():
    from benchbench.models.consistency import assumed_level, make_scheduler
    from benchbench.models.sigma_modes import check_sigma_mode

    sigmas = make_scheduler(40, sigma_max=80.0).sigmas.double()
    grid = _karras(40)[:-1]
    for sigma in np.linspace(0.01, 5, 200):
        lo, hi = grid[grid <= 2 * sigma].max(initial=0.0), grid[grid >= 2 * sigma].min()
        arith, geo = (lo + hi) / 2, math.sqrt(lo * hi) if lo > 0 else 0.0
        differ = geo < 2 * sigma < arith  # between the two midpoints the rules pick different neighbours
        same = assumed_level(sigmas, sigma, "nearest") == assumed_level(sigmas, sigma, "nearest-log")
        assert same != differ, sigma
    with pytest.raises(InvalidArgument, match="nearest-log"):
        check_sigma_mode("closest")
