"""Reverse-SDE purification (DiffPure, Nie et al. 2022; DensePure, Xiao et al. 2023)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from benchbench.smoothing.noise import CopyNoise
from purifiers.diffusion import DDPMBase, strided_timesteps


class SDEPurifier(DDPMBase):
    """Reverse SDE: ancestral DDPM steps from t* down to 0 over `steps` timesteps (`steps` calls); one sample, not DensePure."""

    def __init__(self, steps: int = 10, model: str | None = None, device: str = "cpu", dataset: str = "digits"):
        super().__init__(model=model, device=device, dataset=dataset)
        self.steps = self.check_steps(steps)
        self.sampler = DDPMScheduler.from_config(self.scheduler.config)

    stochastic = True  # called with the batch's CopyNoise

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: CopyNoise) -> torch.Tensor:
        x, t_star = self.start(x_noisy, sigma)
        self.sampler.set_timesteps(timesteps=strided_timesteps(t_star, self.steps))
        for t in self.sampler.timesteps:
            # diffusers draws row i of the step's noise from generator[i]: one stream per noisy copy.
            x = self.sampler.step(self.eps(x, int(t)), t, x, generator=noise.generators).prev_sample
        return self.to_image(x)
