"""Probability-flow ODE purification: deterministic, from the same x_{t*} as `ddpm` and `sde`."""

from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

from benchbench.errors import InvalidArgument
from purifiers.diffusion import DDPMBase, matching_timestep, strided_timesteps

# Euler on the variance-exploding form x/√ᾱ in σ-space is exactly DDIM with η = 0 (Karras et al. 2022,
# section 4), so diffusers' EulerDiscreteScheduler with custom timesteps is our DDIM solver.
SOLVERS = {"ddim": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler}


class PFODEPurifier(DDPMBase):
    """PF-ODE from t* to 0 over `steps` timesteps; solver ddim (`steps` calls) or heun (2·steps−1 calls)."""

    def __init__(self, steps: int = 5, solver: str = "heun", model: str | None = None, device: str = "cpu",
                 dataset: str = "digits"):
        if solver not in SOLVERS:
            raise InvalidArgument(f"unknown pfode solver {solver!r} (available: {', '.join(SOLVERS)})")
        super().__init__(model=model, device=device, dataset=dataset)
        self.steps = self.check_steps(steps)
        self.solver = solver
        self.sampler = SOLVERS[solver].from_config(self.scheduler.config)

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        t_star = matching_timestep(self.alphas_cumprod, sigma)
        self.sampler.set_timesteps(timesteps=strided_timesteps(t_star, self.steps), device=x_noisy.device)
        # The schedulers integrate the variance-exploding form x_t/√ᾱ_t = x0 + σ_t·ε, where x_{t*} is
        # simply 2·x_noisy − 1 at σ_{t*} = √((1 − ᾱ)/ᾱ); scale_model_input turns it back into x_t.
        x = 2 * x_noisy - 1
        for t in self.sampler.timesteps:
            eps = self.eps_at(self.sampler.scale_model_input(x, t), t)
            x = self.sampler.step(eps, t, x).prev_sample
        return self.to_image(x)
