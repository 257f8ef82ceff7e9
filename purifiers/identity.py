"""No purification: the plain smoothed classifier of Cohen et al. (2019)."""

from __future__ import annotations

import torch


class IdentityPurifier:
    """No purification: the run's classifier sees x + δ itself (clean-trained: not Cohen et al.'s baseline, see `cohen`)."""

    networks: tuple[torch.nn.Module, ...] = ()
    # Noisy images leave [0, 1]; the output check must not clip or refuse them.
    output_range = None

    def __call__(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        # Values outside [0, 1] are kept: clipping would change the base classifier Cohen et al. certify.
        return x_noisy
