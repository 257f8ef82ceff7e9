"""The `ddpm` purifier against Carlini et al.'s formula, computed here independently of benchbench."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from benchbench.errors import InvalidArgument
from benchbench.registry import get_purifier


def reference_one_step(unet, x_noisy, sigma):
    # Linear β schedule from 1e-4 to 0.02 over 1000 steps (DDPMScheduler's default), in float64.
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    t = int(np.argmax(np.sqrt((1 - alpha_bar) / alpha_bar) >= 2 * sigma))
    a = alpha_bar[t]
    x_t = np.sqrt(a) * (2 * x_noisy - 1)
    with torch.no_grad():
        eps = unet(x_t.float(), torch.full((len(x_t),), t)).sample
    x0 = (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a)
    return ((x0.clamp(-1, 1) + 1) / 2), t


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_ddpm_purifier_matches_the_one_step_formula(tiny_ddpm, sigma):
    purifier = get_purifier("ddpm", model=str(tiny_ddpm))
    unet = UNet2DModel.from_pretrained(tiny_ddpm, subfolder="unet").eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=gen)
    x_noisy = x + sigma * torch.randn(x.shape, generator=gen)
    expected, t = reference_one_step(unet, x_noisy, sigma)
    got = purifier(x_noisy, sigma)
    assert got.shape == x.shape and got.min() >= 0 and got.max() <= 1
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)
    # t* is the first timestep whose noise ratio reaches 2σ, so the one before falls short of it.
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert np.sqrt((1 - alpha_bar[t]) / alpha_bar[t]) >= 2 * sigma > np.sqrt((1 - alpha_bar[t - 1]) / alpha_bar[t - 1])


def test_ddpm_purifier_refuses_a_sigma_beyond_the_schedule(tiny_ddpm):
    purifier = get_purifier("ddpm", model=str(tiny_ddpm))
    with pytest.raises(InvalidArgument, match="2σ"):
        purifier(torch.zeros(1, 1, 8, 8), 500.0)
