"""Noise streams: full-width keys, independence of batching, the step variance DensePure shares with sde."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench.cli import main
from benchbench.registry import get_purifier
from benchbench.results.rundir import tsv_name
from benchbench.smoothing.noise import COPY_BLOCK, CopyNoise, NoiseStream, key_words, noise_generator

SIGMA = 0.25


def test_keys_that_differ_only_above_bit_32_give_different_streams():
    # The premise: torch's CPU generator keeps only the low 32 bits of a seed.
    same = [torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (7, 7 + 2**32)]
    assert torch.equal(*same)
    for a, b in [((7,), (7 + 2**32,)), ((1, 2**40), (1, 2**41)), ((2**32, 0), (0, 1))]:
        assert not torch.equal(NoiseStream(a).randn((4, 8)), NoiseStream(b).randn((4, 8)))
    assert not torch.equal(noise_generator(3, 5, SIGMA).randn((2, 16)),
                           noise_generator(3 + 2**32, 5, SIGMA).randn((2, 16)))
    assert not torch.equal(CopyNoise.for_copies(3, SIGMA, 5, [0]).randn_like(torch.empty(1, 16)),
                           CopyNoise.for_copies(3 + 2**32, SIGMA, 5, [0]).randn_like(torch.empty(1, 16)))
    # Each field keeps its own 64 bits (SeedSequence would read 2**32 as the two words 0, 1).
    assert key_words([2**32, 0]).tolist() != key_words([0, 1]).tolist()
    with pytest.raises(ValueError):
        key_words([2**64])


def test_copies_whose_old_32_bit_seeds_collided_draw_different_noise():
    # Copy 4004 (its own stream) and vote 2 of copy 14935 of image 270 at σ = 0.25, seed 0: the keys that
    # used to seed them agree in their low 32 bits, which is all torch's CPU generator kept.
    old = [int(np.random.SeedSequence([0, 270, 250000, 1, c], spawn_key=s).generate_state(1, np.uint64)[0])
           & (2**63 - 1) for c, s in ((4004, ()), (14935, (2,)))]
    assert old[0] != old[1] and old[0] % 2**32 == old[1] % 2**32
    rows = CopyNoise(0, SIGMA, [270, 270], [4004, 14935], sub=[0, 2]).randn_like(torch.empty(2, 1, 8, 8))
    assert not torch.equal(rows[0], rows[1])
    assert (rows[0] - rows[1]).abs().max() > 0.5


def test_cpu_streams_are_standard_normal_and_independent_across_rows_and_draws():
    noise = CopyNoise.for_copies(0, SIGMA, 1, range(200))
    a, b = noise.randn_like(torch.empty(200, 3, 8, 8)), noise.randn_like(torch.empty(200, 3, 8, 8))
    for z in (a, b):
        assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    # Kolmogorov–Smirnov against N(0, 1) on 38,400 values, and no correlation between rows or draws.
    from scipy.stats import kstest

    assert kstest(a.flatten().double().numpy(), "norm").pvalue > 1e-3
    assert abs(torch.corrcoef(torch.stack([a[:, 0].flatten(), b[:, 0].flatten()]))[0, 1]) < 0.05
    assert abs(torch.corrcoef(torch.stack([a[:100].flatten(), a[100:].flatten()]))[0, 1]) < 0.05
    assert a.dtype == torch.float32


def test_a_row_is_the_same_in_any_batch_and_any_block_position():
    x = torch.empty(1, 3, 5, 5)  # an odd number of values per row
    alone = {c: CopyNoise.for_copies(9, SIGMA, 4, [c]).randn_like(x) for c in (0, 63, 64, 70, 130)}
    together = CopyNoise(9, SIGMA, [4, 2, 4, 4, 4, 4], [70, 70, 0, 130, 63, 64]).randn_like(x.expand(6, -1, -1, -1))
    for row, c in zip((0, 2, 3, 4, 5), (70, 0, 130, 63, 64)):
        assert torch.equal(together[row], alone[c][0])
    assert not torch.equal(together[0], together[1])  # same copy of another image
    block = CopyNoise.for_copies(9, SIGMA, 4, range(COPY_BLOCK, 2 * COPY_BLOCK)).randn_like(
        x.expand(COPY_BLOCK, -1, -1, -1))
    assert torch.equal(block[70 - COPY_BLOCK], alone[70][0])
    # K votes per copy (rows b·K + v): each row is the copy's sub-stream v, drawn on its own.
    votes = CopyNoise.for_copies(9, SIGMA, 4, [62, 63, 64]).repeat_interleave(3).randn_like(x.expand(9, -1, -1, -1))
    for r in range(9):
        b, v = divmod(r, 3)
        assert torch.equal(votes[r], CopyNoise(9, SIGMA, [4], [62 + b], sub=[v]).randn_like(x)[0])


def test_noise_is_drawn_in_float32_whatever_the_dtype():
    noise = CopyNoise.for_copies(0, SIGMA, 0, range(3))
    ref = CopyNoise.for_copies(0, SIGMA, 0, range(3)).randn_like(torch.empty(3, 16))
    assert torch.equal(noise.randn_like(torch.empty(3, 16, dtype=torch.bfloat16)), ref.to(torch.bfloat16))


def test_generators_are_gone_with_a_message_that_says_what_to_use():
    with pytest.raises(AttributeError, match="randn_like"):
        CopyNoise.for_copies(0, SIGMA, 0, range(2)).generators


@pytest.mark.parametrize("name,params", [("sde", {"steps": 3}), ("densepure", {"k": 3, "steps": 3})])
def test_purified_rows_do_not_depend_on_the_batch(tiny_ddpm, name, params):
    purifier = get_purifier(name, model=str(tiny_ddpm), **params)
    idx = [5] * 10 + [8] * 2
    copies = list(range(58, 68)) + [0, 1]  # across the block boundary at 64, and another image
    x = torch.rand(len(idx), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = purifier(x, SIGMA, CopyNoise(0, SIGMA, idx, copies))
    k = getattr(purifier, "votes", 1)
    for s in range(0, len(idx), 2):
        part = purifier(x[s:s + 2], SIGMA, CopyNoise(0, SIGMA, idx[s:s + 2], copies[s:s + 2]))
        torch.testing.assert_close(part, whole[s * k:(s + 2) * k], atol=1e-5, rtol=0)
    assert not torch.allclose(whole[0], whole[k], atol=1e-3)  # two copies of one image differ


def test_run_rows_at_batch_size_2_equal_rows_at_64(tmp_path, tiny_ddpm):
    specs = f"sde:steps=2:model={tiny_ddpm},densepure:k=3:steps=2:model={tiny_ddpm}"
    for bs in ("2", "64"):
        assert main(["run", "--purifiers", specs, "--num-images", "2", "--skip", "100", "--sigmas", "0.5",
                     "--n0", "4", "--n", "66", "--alpha", "0.01", "--batch-size", bs, "--no-report",
                     "--out", str(tmp_path / bs)]) == 0
    for label in (f"sde(steps=2,model={tiny_ddpm})", f"densepure(k=3,steps=2,model={tiny_ddpm})"):
        name = tsv_name(label, 0.5)
        a, b = (pd.read_csv(tmp_path / bs / name, sep="\t").drop(columns="time") for bs in ("2", "64"))
        assert len(a) == 2
        pd.testing.assert_frame_equal(a, b)
    noise = json.loads((tmp_path / "2" / "config.json").read_text())["experiment"]["noise"]
    assert noise.startswith("v3")


# --- DensePure steps with the checkpoint's own variance, as sde does -------------------------------------

@pytest.fixture(scope="module")
def fixed_large_ddpm(tmp_path_factory):
    """A small random DDPM whose scheduler says variance_type fixed_large (as google/ddpm-cifar10-32's does)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    path = tmp_path_factory.mktemp("fixed-large-ddpm")
    scheduler = DDPMScheduler(num_train_timesteps=1000, variance_type="fixed_large")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


class Ones:
    """Noise that is 1 everywhere: the step's noise term is then its standard deviation itself."""

    def randn_like(self, x):
        return torch.ones_like(x)

    def repeat_interleave(self, k):
        return self


def test_densepure_takes_the_same_first_step_as_sde_on_a_fixed_large_checkpoint(fixed_large_ddpm):
    from diffusers import DDPMScheduler

    sigma = 0.1
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sde = get_purifier("sde", steps=2, model=str(fixed_large_ddpm))
    dense = get_purifier("densepure", k=3, steps=2, model=str(fixed_large_ddpm))
    assert sde.scheduler.config.variance_type == "fixed_large"
    # Under the same noise, every one of the K samples is the sde sample ...
    ones = sde(x, sigma, Ones())
    torch.testing.assert_close(dense(x, sigma, Ones()), ones.repeat_interleave(3, 0))
    noise = CopyNoise.for_copies(0, sigma, 3, range(2))
    samples = dense(x, sigma, noise)
    torch.testing.assert_close(samples, sde(x.repeat_interleave(3, 0), sigma, noise.repeat_interleave(3)))
    # ... and that sample is diffusers' own step with this checkpoint's variance: one step from t* to 0 at
    # steps=2 is t* → 0 → x₀; compare the first step with DDPMScheduler.step given the same noise.
    x_t, t_star = sde.start(x, sigma)
    sched = DDPMScheduler.from_pretrained(fixed_large_ddpm, subfolder="scheduler")
    sched.set_timesteps(timesteps=[t_star, 0])
    eps = sde.eps(x_t, t_star)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(4))
    theirs = sched.step(eps, t_star, x_t, generator=torch.Generator().manual_seed(4)).prev_sample
    from purifiers.diffusion import ancestral_step

    ours = ancestral_step(sde.alphas_cumprod, eps, t_star, 0, x_t, z, 1.0, "fixed_large")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    small = ancestral_step(sde.alphas_cumprod, eps, t_star, 0, x_t, z, 1.0, "fixed_small")
    assert (small - theirs).abs().max() > 1e-3  # the rule matters at this step

