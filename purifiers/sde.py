"""Reverse-SDE purification (DiffPure, Nie et al. 2022; DensePure, Xiao et al. 2023)."""

from __future__ import annotations

import torch

from benchbench.smoothing.noise import CopyNoise
from purifiers.diffusion import DDPMBase


class SDEPurifier(DDPMBase):
    """Reverse SDE: ancestral DDPM steps from t* down to 0 over `steps` timesteps (`steps` calls); one sample, not DensePure.

    The step is :func:`purifiers.diffusion.ancestral_step`, what diffusers' ``DDPMScheduler.step`` computes
    (custom timesteps, the checkpoint's variance type and clipping), with the noise of each step drawn from
    each copy's own stream (:meth:`DDPMBase.reverse_sde`)."""

    stochastic = True  # called with the batch's CopyNoise

    def __init__(self, steps: int = 10, model: str | None = None, device: str = "cpu", dataset: str = "digits"):
        super().__init__(model=model, device=device, dataset=dataset)
        self.steps = self.check_steps(steps)

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: CopyNoise) -> torch.Tensor:
        return self.reverse_sde(x_noisy, sigma, noise, self.steps)
