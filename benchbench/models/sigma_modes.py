"""How a consistency model is called at noise level 2σ (see :mod:`benchbench.models.consistency`).

* ``nearest``: the grid level nearest to 2σ (the authors' choice), no extra noise;
* ``exact``: 2σ itself (c_skip, c_out and t(σ) are continuous in σ);
* ``topup``: the first grid level at or above 2σ, with fresh noise added to reach it.

Plain constants, kept apart from the model code so that the CLI can name them without importing torch.
"""

from __future__ import annotations

from benchbench.errors import InvalidArgument

SIGMA_MODES = ("exact", "nearest", "topup")
DEFAULT_SIGMA_MODE = "nearest"  # chosen on the val split across σ ∈ {0.12, …, 1.0}: see README (σ modes)


def check_sigma_mode(mode: str) -> str:
    """``mode`` itself when it is one of :data:`SIGMA_MODES`; otherwise :class:`InvalidArgument`."""
    if mode not in SIGMA_MODES:
        raise InvalidArgument(f"unknown sigma_mode {mode!r} (available: {', '.join(SIGMA_MODES)})")
    return mode
