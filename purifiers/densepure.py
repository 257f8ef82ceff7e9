"""DensePure (Xiao et al., ICLR 2023): majority vote over several reverse-SDE purifications of one input."""

from __future__ import annotations

from typing import Any

import torch

from benchbench.errors import InvalidArgument
from purifiers.diffusion import DDPMBase, ancestral_step, strided_timesteps


class DensePurePurifier(DDPMBase):
    """DensePure: K reverse-SDE samples per noisy input; the label is the majority vote of their K labels.

    Each of the K samples is exactly an ``sde`` purification (ancestral DDPM steps over ``steps`` timesteps
    spread evenly from t* down to 0, K·``steps`` network calls per noisy input), with independent noise.
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
        self.clip = 1.0 if self.scheduler.config.clip_sample else None

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: Any) -> torch.Tensor:
        """x_noisy: (B, C, H, W) in [0, 1]; ``noise``: per-copy randomness with ``randn_like`` (B rows).
        Returns (B·K, C, H, W) in [0, 1]."""
        k = self.votes
        x, t_star = self.start(x_noisy, sigma)
        x = x.repeat_interleave(k, 0)
        timesteps = strided_timesteps(t_star, self.steps)
        for i, t in enumerate(timesteps):
            prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            # K successive draws from each copy's own stream: sample j of copy b uses draw j.
            z = torch.stack([noise.randn_like(x_noisy) for _ in range(k)], 1).flatten(0, 1) if t > 0 else None
            x = ancestral_step(self.alphas_cumprod, self.eps(x, t), t, prev_t, x, z, self.clip)
        return self.to_image(x)
