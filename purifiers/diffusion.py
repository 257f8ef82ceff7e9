"""What the diffusion purifiers share: loading a DDPM and matching its timestep to the certification σ."""

from __future__ import annotations

import math
from typing import Any

import torch

import numpy as np
from diffusers import DDPMScheduler

from benchbench.data.dataset import dataset_info
from benchbench.errors import CheckpointError, InvalidArgument
from benchbench.models.ddpm_ve import PREDICTION_TYPES, mean_channels, to_epsilon
from benchbench.models.store import fingerprint, load_ddpm


def strided_timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` timesteps spread evenly from t* down to 0, both included, descending and distinct
    (fewer than ``steps`` when t* + 1 < steps)."""
    grid = torch.linspace(t_star, 0, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


def matching_timestep(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """t* = the first t with √((1 − ᾱ_t)/ᾱ_t) ≥ 2σ (Carlini et al. 2023).

    x + δ with δ ~ N(0, σ²I) in [0, 1] is 2x − 1 + 2δ in [-1, 1], and √ᾱ_t·(2x − 1 + 2δ) has the marginal
    of x_t exactly when √((1 − ᾱ_t)/ᾱ_t) = 2σ; the first t at or above it never assumes less noise than
    there is.
    """
    ratio = torch.sqrt((1 - alphas_cumprod.double()) / alphas_cumprod.double())
    above = torch.nonzero(ratio >= 2 * sigma)
    if len(above) == 0:
        raise InvalidArgument(
            f"sigma={sigma} needs noise level 2σ={2 * sigma:g}, above this model's largest "
            f"√((1−ᾱ)/ᾱ)={ratio[-1].item():.3g}"
        )
    return int(above[0])


class DDPMBase:
    """Loads a DDPM (embedded name, local folder or hub id; the dataset's default when ``model`` is None)
    and maps x_noisy in [0, 1] onto the diffusion trajectory at t*.

    Everything about the model comes from its own config: the β schedule (``linear``,
    ``squaredcos_cap_v2``, …, through diffusers' ``DDPMScheduler``), the prediction type (``epsilon``,
    ``v_prediction`` or ``sample``: :meth:`eps` always returns ε) and the variance type (a UNet with
    2·C output channels, ``learned``/``learned_range``, predicts mean and variance: only the C mean
    channels are used). ``image_shape`` (C, H, W) is what the UNet takes; the harness checks it against
    the dataset. ``self.scheduler`` is the model's scheduler re-expressed for ε inputs (prediction type
    ``epsilon``; a learned variance becomes the posterior variance ``fixed_small``), which the samplers copy.
    """

    def __init__(self, model: str | None = None, device: str = "cpu", dataset: str = "digits"):
        ref = model or dataset_info(dataset).default_ddpm
        if ref is None:
            raise InvalidArgument(f"no default DDPM for dataset {dataset!r}: pass model=FOLDER_OR_HUB_ID")
        self.model_ref = ref
        self.device = torch.device(device)
        self.unet, loaded = load_ddpm(self.model_ref, self.device)
        config = loaded.config
        self.prediction_type = config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(f"DDPM {ref!r}: prediction_type {self.prediction_type!r} is not supported "
                                  f"({', '.join(PREDICTION_TYPES)})")
        if getattr(self.unet.config, "num_class_embeds", None):
            raise CheckpointError(f"DDPM {ref!r} is class-conditional ({self.unet.config.num_class_embeds} classes); "
                                  f"the diffusion purifiers run unconditional DDPMs")
        c_in, c_out = self.unet.config.in_channels, self.unet.config.out_channels
        if c_out not in (c_in, 2 * c_in):
            raise CheckpointError(f"DDPM {ref!r}: {c_out} output channels for {c_in} input channels; expected "
                                  f"{c_in} (fixed variance) or {2 * c_in} (learned variance)")
        self.variance_type = config.get("variance_type", "fixed_small")
        variance = "fixed_small" if str(self.variance_type).startswith("learned") else self.variance_type
        self.scheduler = DDPMScheduler.from_config(config, prediction_type="epsilon", variance_type=variance)
        size = self.unet.config.sample_size
        self.image_shape = (c_in, *((size, size) if isinstance(size, int) else size))
        self.fingerprint = fingerprint(self.model_ref, "ddpm")  # recorded in config.json
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)
        self.networks = (self.unet,)

    def start(self, x_noisy: torch.Tensor, sigma: float) -> tuple[torch.Tensor, int]:
        """x_{t*} = √ᾱ_{t*}·(2·x_noisy − 1), and t*."""
        t = matching_timestep(self.alphas_cumprod, sigma)
        return math.sqrt(self.alphas_cumprod[t].item()) * (2 * x_noisy - 1), t

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at a (possibly fractional) timestep, interpolated in log σ as diffusers' discrete schedulers do."""
        log_sigma = np.log(np.sqrt((1 - self.alphas_cumprod.numpy()) / self.alphas_cumprod.numpy()))
        s = np.exp(np.interp(t.double().cpu().numpy(), np.arange(len(log_sigma)), log_sigma))
        return torch.as_tensor(1 / (1 + s**2), dtype=torch.float64)

    def eps(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """ε_θ(x_t, t) at an integer timestep: one network call."""
        out = self.unet(x_t, torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)).sample
        return to_epsilon(mean_channels(out, x_t), x_t, self.alphas_cumprod[t], self.prediction_type)

    def eps_at(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t) at a scheduler timestep (a 0-d tensor, possibly fractional): one network call."""
        out = self.unet(x_t, t.to(x_t.device).expand(len(x_t))).sample
        if self.prediction_type == "epsilon":
            return mean_channels(out, x_t)
        return to_epsilon(mean_channels(out, x_t), x_t, self._alpha_bar(t.reshape(())), self.prediction_type)

    @torch.no_grad()
    def reverse_sde(self, x_noisy: torch.Tensor, sigma: float, noise: Any, steps: int) -> torch.Tensor:
        """One reverse-SDE sample per row: ancestral DDPM steps over ``steps`` timesteps spread evenly from t*
        down to 0, each step's noise the next ``noise.randn_like`` draw (the rows' own streams), with the
        checkpoint's own step variance (``self.scheduler``'s ``variance_type``) and x̂₀ clipping. Images in
        [0, 1]. ``sde`` is this on each copy, ``densepure`` this on K repetitions of each copy."""
        config = self.scheduler.config
        if config.get("thresholding"):
            raise CheckpointError(f"DDPM {self.model_ref!r}: dynamic thresholding is not supported by the "
                                  f"stochastic samplers")
        clip = float(config.get("clip_sample_range", 1.0)) if config.clip_sample else None
        x, t_star = self.start(x_noisy, sigma)
        timesteps = strided_timesteps(t_star, steps)
        for i, t in enumerate(timesteps):
            prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            z = noise.randn_like(x) if t > 0 else None
            x = ancestral_step(self.alphas_cumprod, self.eps(x, t), t, prev_t, x, z, clip,
                               config.variance_type)
        return self.to_image(x)

    @staticmethod
    def check_steps(steps: int) -> int:
        if steps < 1:
            raise InvalidArgument(f"steps must be >= 1, got {steps}")
        return steps

    @staticmethod
    def to_image(x0: torch.Tensor) -> torch.Tensor:
        """Clip an estimate of x₀ in [-1, 1] and map it to [0, 1]."""
        return (x0.clamp(-1, 1) + 1) / 2


# The step variances diffusers' DDPMScheduler knows for a fixed (not learned) variance: the posterior's
# ("small", Ho et al.'s σ_t² = β̃_t) or the forward process's ("large", σ_t² = β_t); "_log" forms differ only
# in how diffusers computes the same value (DDPMBase maps a learned variance to "fixed_small").
STEP_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def ancestral_step(alphas_cumprod: torch.Tensor, eps: torch.Tensor, t: int, prev_t: int, x_t: torch.Tensor,
                   z: torch.Tensor | None, clip: float | None = 1.0,
                   variance_type: str = "fixed_small") -> torch.Tensor:
    """One ancestral DDPM step x_t → x_{prev_t} (Ho et al. 2020, eq. 7; ``prev_t`` = −1 means x₀), with x̂₀
    clipped to [−clip, clip] and the step variance of ``variance_type`` (``fixed_small``: the posterior's
    (1−ᾱ_prev)/(1−ᾱ_t)·β; ``fixed_large``: β = 1 − ᾱ_t/ᾱ_prev), as diffusers' ``DDPMScheduler.step`` with
    custom timesteps computes it; the noise ``z`` (same shape as x_t; unused when t = 0) is given.

    Written out because ``DDPMScheduler.step`` draws its noise itself from a generator, and a stochastic
    purifier must draw every sample from its per-copy noise (``CopyNoise``).
    """
    if variance_type not in STEP_VARIANCES:
        raise InvalidArgument(f"variance_type {variance_type!r} is not one of {', '.join(STEP_VARIANCES)}")
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x_t
    if t == 0:
        return mean
    if variance_type.startswith("fixed_large"):
        variance = beta
    else:
        variance = max((1 - a_prev) / (1 - a_t) * beta, 1e-20)
    return mean + math.sqrt(variance) * z
