"""Consistency models (Song, Dhariwal, Chen & Sutskever, ICML 2023) in diffusers' format.

f(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, t(σ)) maps a point x = x₀ + σ·ε of the VE probability-flow
ODE at noise level σ straight to an estimate of x₀ (data in [-1, 1], σ in that scale). F is a diffusers
``UNet2DModel``; c_skip, c_out (boundary-condition form) and t(σ) = 250·ln σ come from diffusers'
``CMStochasticIterativeScheduler``, c_in = 1/√(σ² + σ_data²) as in its ``scale_model_input``. Because
c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly, f(x, σ_min) = x exactly.

The σ grid is Karras et al.'s: N levels from σ_max down to σ_min = 0.002 with ρ = 7. The defaults are
N = 16 and σ_max = 90 (Song et al. use N = 18, σ_max = 80 on CIFAR-10): σ_max is far above the data scale
(pixel values in [-1, 1]), so x = σ_max·z is pure noise, and below the embedded DDPM teacher's own largest
level √((1−ᾱ_999)/ᾱ_999) ≈ 157; and with these two values the grid has a level just above each noise level
a purifier meets at the benchmark's σ = 0.25, 0.5, 1 (2σ = 0.5, 1, 2 → σ_k = 0.510, 1.055, 2.038), so
topping the noise up to the grid (:func:`top_up`) adds little. Other grids are a config away.

A model is saved as a ``ConsistencyModelPipeline`` folder (``unet/``, ``scheduler/`` holding the
``CMStochasticIterativeScheduler`` config whose ``num_train_timesteps`` is N, ``model_index.json``), so
``diffusers.ConsistencyModelPipeline.from_pretrained(path)`` samples from it as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import torch
from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

from benchbench.errors import InvalidArgument
from benchbench.models.store import _load, load_unet
from benchbench.smoothing.noise import CopyNoise
from benchbench.models.sigma_modes import NEAREST_RULES, check_sigma_mode

SIGMA_MIN = 0.002
SIGMA_MAX = 90.0
SIGMA_DATA = 0.5
RHO = 7.0
KINDS = ("consistency", "consistency-ft")


def make_scheduler(num_levels: int = 16, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                   sigma_data: float = SIGMA_DATA, rho: float = RHO) -> CMStochasticIterativeScheduler:
    """The scheduler whose config fixes the model's σ grid (N = ``num_levels`` Karras levels)."""
    return CMStochasticIterativeScheduler(num_train_timesteps=num_levels, sigma_min=sigma_min,
                                          sigma_max=sigma_max, sigma_data=sigma_data, rho=rho)


class ConsistencyModel(torch.nn.Module):
    """f(x, σ): x in VE form (x₀ + σ·ε, x₀ in [-1, 1]), shape (B, C, H, W); σ a float or a (B,) tensor.

    ``sigmas``: the training grid, float64, descending (index 0 = σ_max, index N−1 = σ_min), exactly the
    levels a freshly built ``CMStochasticIterativeScheduler`` with this config holds.
    """

    def __init__(self, unet: UNet2DModel, scheduler: CMStochasticIterativeScheduler):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        # A fresh copy: set_timesteps() on the pipeline's scheduler replaces its .sigmas.
        self.sigmas = CMStochasticIterativeScheduler.from_config(scheduler.config).sigmas.double()
        self.sigma_min = float(scheduler.config.sigma_min)
        # Karras' formula gives σ_min only up to rounding (0.0020000000000000005); the boundary needs it exact.
        self.sigmas[-1] = self.sigma_min
        self.sigma_max = float(scheduler.config.sigma_max)
        self.sigma_data = float(scheduler.config.sigma_data)

    def _sigma_column(self, sigma: float | torch.Tensor, batch: int) -> torch.Tensor:
        # Python floats become float64; a float tensor keeps its precision, so σ_min given in float32 still
        # makes σ − σ_min exactly 0 (the scalar σ_min is rounded to the same float32).
        keep = torch.is_tensor(sigma) and sigma.is_floating_point()
        sigma = torch.as_tensor(sigma, dtype=None if keep else torch.float64).detach().cpu().reshape(-1)
        return sigma.expand(batch) if sigma.numel() == 1 else sigma

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """f(x, σ); ``class_labels`` (B,) int64 for a class-conditional UNet (``num_class_embeds``)."""
        s = self._sigma_column(sigma, len(x))
        # c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly, and stay so after the cast to x's dtype.
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition(s)
        # scale_model_input() reads the scheduler's step state (one σ per batch); training needs one per sample.
        c_in = 1.0 / torch.sqrt(s**2 + self.sigma_data**2)
        t = torch.from_numpy(self.scheduler.sigma_to_t(s.numpy()))
        view = (-1,) + (1,) * (x.dim() - 1)
        cast = dict(device=x.device, dtype=x.dtype)
        # t stays float64: a Fourier embedding (NCSN++) multiplies it into phases of hundreds of radians, where
        # float32 rounding would move them by ~1e-5; positional embeddings cast it to float32 themselves.
        out = self.unet(c_in.to(**cast).view(view) * x, t.to(device=x.device), class_labels=class_labels).sample
        return c_skip.to(**cast).view(view) * x + c_out.to(**cast).view(view) * out

    def save_pretrained(self, out: str | Path) -> None:
        """Write a ``ConsistencyModelPipeline`` folder (weights as safetensors)."""
        ConsistencyModelPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(out)


def level_at_or_above(sigmas: torch.Tensor, level: float) -> int:
    """Index into the descending grid ``sigmas`` of the smallest level σ_k ≥ ``level``.

    A level within 1e-9 (relative) of a grid level counts as that level, so an on-grid request adds no
    noise despite float rounding. Raises InvalidArgument when ``level`` exceeds σ_max.
    """
    grid = sigmas.double()
    ok = torch.nonzero(grid >= level * (1 - 1e-9)).flatten()
    if len(ok) == 0:
        raise InvalidArgument(
            f"noise level {level:g} (2σ) is above this consistency model's σ_max={grid[0].item():g}")
    return int(ok[-1])


Noise = Union[CopyNoise, torch.Generator, None]
"""Where the purifiers' extra noise comes from: a run's per-copy :class:`CopyNoise` (purification), or a
plain CPU generator (training, which draws whole batches)."""


def randn_like(x: torch.Tensor, noise: Noise) -> torch.Tensor:
    """N(0, I) shaped like x, drawn in float32 on the CPU (the same values on every device), cast to x."""
    if isinstance(noise, CopyNoise):
        return noise.randn_like(x)
    return torch.randn(x.shape, generator=noise, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def top_up(x: torch.Tensor, level: float, sigmas: torch.Tensor, noise: Noise = None) -> tuple[torch.Tensor, int]:
    """Raise the noise of ``x`` (VE form at noise level ``level``) to the next grid level σ_k ≥ level.

    Returns (x + √(σ_k² − level²)·z, k) with z ~ N(0, I) from ``noise`` (:func:`randn_like`); nothing is
    added when ``level`` is on the grid. The sum has exactly the noise level σ_k the model was trained on,
    and stays a randomised function of x.
    """
    k = level_at_or_above(sigmas, level)
    extra = float(sigmas[k]) ** 2 - level**2
    if extra <= level**2 * 2e-9:  # on the grid (see level_at_or_above)
        return x, k
    return x + math.sqrt(extra) * randn_like(x, noise), k


def multistep_levels(sigmas: torch.Tensor, start: int, steps: int) -> list[int]:
    """Grid indices for ``steps`` consistency steps starting at index ``start``: evenly spread (in index)
    over the levels from σ_start down to, but excluding, σ_min (where f is the identity)."""
    last = len(sigmas) - 1  # σ_min
    if steps < 1 or steps > last - start:
        raise InvalidArgument(f"steps={steps}: between 1 and {max(1, last - start)} grid levels are available "
                              f"at or below σ={float(sigmas[start]):g}")
    idx = [start + round(i * (last - start) / steps) for i in range(steps)]
    return sorted(set(idx))


def consistency_sample(model: ConsistencyModel, x: torch.Tensor, start: int, steps: int = 1,
                       noise: Noise = None, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. Algorithm 1) from ``x`` at grid level σ_start.

    Each step applies f once (one network call) and clips to [-1, 1]; between steps the estimate is
    re-noised to the next level σ_j with √(σ_j² − σ_min²)·z (z from ``noise``, :func:`randn_like`).
    Returns the final estimate of x₀ in [-1, 1].
    """
    levels = multistep_levels(model.sigmas, start, steps)
    x0 = model(x, float(model.sigmas[levels[0]]), class_labels).clamp(-1, 1)
    for j in levels[1:]:
        s = float(model.sigmas[j])
        x0 = model(x0 + math.sqrt(s**2 - model.sigma_min**2) * randn_like(x, noise), s, class_labels).clamp(-1, 1)
    return x0


def load_consistency(ref: str, device: str | torch.device = "cpu", kind: str = "consistency") -> ConsistencyModel:
    """Load a consistency model in eval mode: embedded name (``digits`` with ``kind`` ``consistency`` or
    ``consistency-ft``), ``ConsistencyModelPipeline`` folder, or hub id — resolved exactly like every other
    model by :mod:`benchbench.models.store`."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown consistency model kind {kind!r} (available: {', '.join(KINDS)})")
    unet = load_unet(ref, kind)
    scheduler = _load(CMStochasticIterativeScheduler, ref, kind, subfolder="scheduler")
    return ConsistencyModel(unet, scheduler).to(device).eval()


def level_nearest(sigmas: torch.Tensor, level: float, rule: str = "absolute") -> int:
    """Index of the grid level closest to ``level``, σ_min excluded (f is the identity there).

    ``rule`` ``absolute``: argmin_k |σ_k − level|, Li et al. 2024's choice (sigma_mode ``nearest``);
    ``log``: argmin_k |ln σ_k − ln level|, closest in ratio (sigma_mode ``nearest-log``). The two differ
    where ``level`` lies between the arithmetic and the geometric mean of two adjacent levels, e.g. 2σ = 0.3
    on the 40-level ImageNet grid (σ_max = 80): 0.2556 vs 0.3489.
    """
    grid = sigmas[:-1].double()
    if rule == "absolute":
        return int(torch.argmin(torch.abs(grid - level)))
    if rule == "log":
        return int(torch.argmin(torch.abs(torch.log(grid) - math.log(level))))
    raise InvalidArgument(f"unknown nearest-level rule {rule!r} (available: absolute, log)")


def grid_level(sigmas: torch.Tensor, sigma: float, mode: str) -> int:
    """The grid index the first network call of ``mode`` is tied to at image-scale σ: the level nearest to 2σ
    by the mode's rule for ``nearest`` / ``nearest-log`` (where f is called), else the first level ≥ 2σ
    (``topup`` calls f there; ``exact`` calls f at 2σ, at or just below it, and continues below it)."""
    check_sigma_mode(mode)
    if mode in NEAREST_RULES:
        return level_nearest(sigmas, 2 * sigma, NEAREST_RULES[mode])
    return level_at_or_above(sigmas, 2 * sigma)


def assumed_level(sigmas: torch.Tensor, sigma: float, mode: str) -> float:
    """The noise level (model scale) that the first network call of ``mode`` assumes at image-scale σ:
    2σ for ``exact``, the nearest grid level for ``nearest`` / ``nearest-log`` (each by its rule), the next
    level ≥ 2σ for ``topup`` (where the input's noise is raised to it). ``assumed_level / (2σ) − 1`` is the
    mismatch or inflation."""
    check_sigma_mode(mode)
    return 2 * sigma if mode == "exact" else float(sigmas[grid_level(sigmas, sigma, mode)])


def first_call(model: ConsistencyModel, x_noisy: torch.Tensor, sigma: float, mode: str,
               noise: Noise = None) -> tuple[torch.Tensor, float, int]:
    """The first network call of consistency purification in ``mode``: (input x in the model's VE scale,
    the level σ' to call f at, the grid index k that multistep sampling continues below).

    2·x_noisy − 1 = x₀ + 2σ·ε is the VE form at noise level 2σ (x_noisy = x + δ in [0, 1], σ in image scale).

    * ``topup``: raise the noise to the next grid level σ_k ≥ 2σ (:func:`top_up`, noise from ``noise``)
      and call f(·, σ_k): a level the model was trained on, but more noise than there is (+113% at σ = 0.12
      on the 16-level grid);
    * ``nearest``: f(x, σ_k) at the grid level nearest to 2σ, argmin_k |σ_k − 2σ|, no noise added (Li et
      al.'s rule, on a 40-level grid in their code): the model assumes a level up to half a grid step away;
    * ``nearest-log``: the same with the level nearest in ratio, argmin_k |ln σ_k − ln 2σ|;
    * ``exact``: f(x, 2σ): c_skip, c_out, c_in and t(σ) are continuous in σ, so f is evaluated at the true
      noise level, between the grid levels it was trained on; adds no noise.
    """
    check_sigma_mode(mode)
    x = 2 * x_noisy - 1
    if mode == "topup":
        x, k = top_up(x, 2 * sigma, model.sigmas, noise)
        return x, float(model.sigmas[k]), k
    k = grid_level(model.sigmas, sigma, mode)
    return x, 2 * sigma if mode == "exact" else float(model.sigmas[k]), k


def purify(model: ConsistencyModel, x_noisy: torch.Tensor, sigma: float, noise: Noise = None,
           steps: int = 1, class_labels: torch.Tensor | None = None, mode: str = "topup") -> torch.Tensor:
    """Consistency purification of x_noisy = x + δ (x in [0, 1], δ ~ N(0, σ²I), σ in image scale).

    The first network call is :func:`first_call` in ``mode``; ``steps`` > 1 continues with multistep
    consistency sampling (Song et al. Algorithm 1) on the grid levels below σ_k, re-noising with noise from
    ``noise`` (a CopyNoise, or a generator in training). ``class_labels`` (B,) go to a class-conditional
    model. Returns images in [0, 1]; differentiable with respect to the model's weights.
    """
    if 2 * sigma <= model.sigma_min * (1 + 1e-9):  # f(x, σ_min) = x: no network call needed
        check_sigma_mode(mode)
        return x_noisy.clamp(0, 1)
    x, level, k = first_call(model, x_noisy, sigma, mode, noise)
    x0 = model(x, level, class_labels).clamp(-1, 1)
    for j in multistep_levels(model.sigmas, k, steps)[1:]:
        s = float(model.sigmas[j])
        x0 = model(x0 + math.sqrt(s**2 - model.sigma_min**2) * randn_like(x, noise), s, class_labels).clamp(-1, 1)
    return (x0 + 1) / 2
