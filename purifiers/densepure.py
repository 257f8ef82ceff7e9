"""DensePure (Xiao et al., ICLR 2023): majority vote over several reverse-SDE purifications of one input."""

from __future__ import annotations

from typing import Any

import torch

from benchbench.errors import InvalidArgument
from purifiers.diffusion import DDPMBase


class DensePurePurifier(DDPMBase):
    """DensePure: K reverse-SDE samples per noisy input; the label is the majority vote of their K labels.

    Each of the K samples is exactly an ``sde`` purification (ancestral DDPM steps over ``steps`` timesteps
    spread evenly from t* down to 0, with the checkpoint's own step variance; K·``steps`` network calls per
    noisy input), with independent noise: sample j draws from the copy's sub-stream j.
    The purifier returns the K samples of every input (``votes = K``, rows b·K … b·K+K−1 for input b); the
    harness classifies them all and takes the majority label (ties → the lowest class). ``sde`` alone is one
    sample, not DensePure. Stochastic: every draw comes from the per-copy ``noise`` the harness passes.
    """

    stochastic = True

    def __init__(self, k: int = 5, steps: int = 10, model: str | None = None, device: str = "cpu",
                 dataset: str = "digits"):
        if k < 1:
            raise InvalidArgument(f"densepure: k must be >= 1, got {k}")
        super().__init__(model=model, device=device, dataset=dataset)
        self.steps = self.check_steps(steps)
        self.votes = k

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: Any) -> torch.Tensor:
        """x_noisy: (B, C, H, W) in [0, 1]; ``noise``: the batch's CopyNoise (B rows).
        Returns (B·K, C, H, W) in [0, 1]: sample j of input b is an ``sde`` purification of input b with the
        copy's sub-stream j (``noise.repeat_interleave(K)``)."""
        k = self.votes
        return self.reverse_sde(x_noisy.repeat_interleave(k, 0), sigma, noise.repeat_interleave(k), self.steps)
