"""A DDPM (data in [-1, 1]) seen as a VE diffusion: the teacher of consistency distillation.

At DDPM step t the noise level in VE form is σ(t) = √((1 − ᾱ_t)/ᾱ_t): x_VE = x₀ + σ·ε = x_t/√ᾱ_t. The
ε-network takes x_VE/√(1 + σ²) (= √ᾱ·x_VE) at the fractional t whose σ(t) equals σ, interpolated linearly
in ln σ (as diffusers' Euler/Heun discrete schedulers do). σ outside [σ(0), σ(T−1)] uses the end timestep.
The probability-flow ODE in VE form is dx/dσ = (x − D(x, σ))/σ = ε̂(x, σ), with D(x, σ) = x − σ·ε̂.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def mean_channels(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The first C channels of a UNet output for inputs with C channels: a learned-variance model
    (``variance_type`` learned / learned_range) outputs 2·C, the mean part first."""
    return output[:, : x.shape[1]]


def to_epsilon(output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float | torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """The ε a network output stands for, at x_t = √ᾱ·x₀ + √(1−ᾱ)·ε (ᾱ a float or a (B,) tensor).

    ``epsilon``: itself; ``v_prediction`` (v = √ᾱ·ε − √(1−ᾱ)·x₀): ε = √ᾱ·v + √(1−ᾱ)·x_t; ``sample`` (x₀):
    ε = (x_t − √ᾱ·x₀)/√(1−ᾱ).
    """
    if prediction_type == "epsilon":
        return output
    a = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, *(1,) * (x_t.dim() - 1))
    a = a.to(device=x_t.device, dtype=x_t.dtype)
    if prediction_type == "v_prediction":
        return a.sqrt() * output + (1 - a).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - a.sqrt() * output) / (1 - a).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


class DDPMAsVE(torch.nn.Module):
    """ε̂(x, σ) and the denoiser D(x, σ) of a DDPM for VE-form inputs; σ a float or a (B,) tensor."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        self.unet = unet
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
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
        x_t = scale * x
        out = mean_channels(self.unet(x_t, self.timestep(s).to(device=x.device, dtype=x.dtype)).sample, x)
        return to_epsilon(out, x_t, 1 / (1 + s**2), self.prediction_type)

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
