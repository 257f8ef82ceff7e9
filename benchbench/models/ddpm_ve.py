"""A DDPM (ε-prediction, data in [-1, 1]) seen as a VE diffusion: the teacher of consistency distillation.

At DDPM step t the noise level in VE form is σ(t) = √((1 − ᾱ_t)/ᾱ_t): x_VE = x₀ + σ·ε = x_t/√ᾱ_t. The
ε-network takes x_VE/√(1 + σ²) (= √ᾱ·x_VE) at the fractional t whose σ(t) equals σ, interpolated linearly
in ln σ (as diffusers' Euler/Heun discrete schedulers do). σ outside [σ(0), σ(T−1)] uses the end timestep.
The probability-flow ODE in VE form is dx/dσ = (x − D(x, σ))/σ = ε̂(x, σ), with D(x, σ) = x − σ·ε̂.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel


class DDPMAsVE(torch.nn.Module):
    """ε̂(x, σ) and the denoiser D(x, σ) of a DDPM for VE-form inputs; σ a float or a (B,) tensor."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        self.unet = unet
        ac = scheduler.alphas_cumprod.double()
        self.log_sigmas = torch.log(torch.sqrt((1 - ac) / ac)).numpy()
        self.sigma_max = float(np.exp(self.log_sigmas[-1]))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional DDPM timestep(s) whose noise level is ``sigma`` (float64, CPU)."""
        # np.interp clamps outside the table; the Euler scheduler's private _sigma_to_t does the same job.
        t = np.interp(np.log(sigma.double().cpu().numpy()), self.log_sigmas, np.arange(len(self.log_sigmas)))
        return torch.from_numpy(t)

    def eps(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """ε̂(x, σ) for x = x₀ + σ·ε: one network call."""
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(len(x)).cpu()
        scale = (1 / torch.sqrt(1 + s**2)).to(device=x.device, dtype=x.dtype).view(-1, *(1,) * (x.dim() - 1))
        return self.unet(scale * x, self.timestep(s).to(device=x.device, dtype=x.dtype)).sample

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(x, σ) = x − σ·ε̂(x, σ), the estimate of x₀."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *(1,) * (x.dim() - 1))
        return x - s * self.eps(x, sigma)

    @torch.no_grad()
    def heun_step(self, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
        """One Heun (2nd-order) PF-ODE step from σ_from to σ_to, per sample: two network calls.

        Hand-written because diffusers' Heun scheduler steps one shared σ per batch, and distillation draws
        a different grid level for every sample.
        """
        view = (-1,) + (1,) * (x.dim() - 1)
        h = (sigma_to - sigma_from).to(device=x.device, dtype=x.dtype).view(view)
        d = self.eps(x, sigma_from)
        x_euler = x + h * d
        return x + h * (d + self.eps(x_euler, sigma_to)) / 2
