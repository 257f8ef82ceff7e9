"""One-step DDPM denoising (Carlini, Tramèr, Dvijotham, Rice, Sun & Kolter, ICLR 2023)."""

from __future__ import annotations

import math

import torch

from purifiers.diffusion import DDPMBase


class DDPMPurifier(DDPMBase):
    """One-step DDPM denoising at the timestep matching 2σ (Carlini et al. 2023): 1 network call."""

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        x_t, t = self.start(x_noisy, sigma)
        a = self.alphas_cumprod[t].item()
        x0 = (x_t - math.sqrt(1 - a) * self.eps(x_t, t)) / math.sqrt(a)
        return self.to_image(x0)
