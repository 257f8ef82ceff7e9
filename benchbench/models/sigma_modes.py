"""How a consistency model is called at noise level 2σ (see :mod:`benchbench.models.consistency`).

* ``nearest``: the grid level nearest to 2σ in absolute difference, argmin_k |σ_k − 2σ| (Li et al. 2024's
  rule), no extra noise;
* ``nearest-log``: the grid level nearest to 2σ in ratio, argmin_k |ln σ_k − ln 2σ| (benchbench's former
  ``nearest``), no extra noise;
* ``exact``: 2σ itself (c_skip, c_out and t(σ) are continuous in σ);
* ``topup``: the first grid level at or above 2σ, with fresh noise added to reach it.

Plain constants, kept apart from the model code so that the CLI can name them without importing torch.
"""

from __future__ import annotations

from benchbench.errors import InvalidArgument

SIGMA_MODES = ("exact", "nearest", "nearest-log", "topup")
# The modes that call f at a grid level without adding noise, and the distance each one measures in.
NEAREST_RULES = {"nearest": "absolute", "nearest-log": "log"}
# Li et al.'s rule, so that `consistency` is the paper's method as published; on the digits val split
# `nearest-log` has the lower mean distance (it differs at σ = 0.75 only): see README (σ modes).
DEFAULT_SIGMA_MODE = "nearest"


def check_sigma_mode(mode: str) -> str:
    """``mode`` itself when it is one of :data:`SIGMA_MODES`; otherwise :class:`InvalidArgument`."""
    if mode not in SIGMA_MODES:
        raise InvalidArgument(f"unknown sigma_mode {mode!r} (available: {', '.join(SIGMA_MODES)})")
    return mode
