"""Multi-step purifiers: `sde` (reverse SDE) and `pfode` (probability-flow ODE, ddim and heun solvers)."""

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench.cli import main
from benchbench.data.dataset import get_dataset
from benchbench.errors import InvalidArgument
from benchbench.smoothing.nfe import ForwardCounter
from benchbench.registry import get_purifier, purify
from benchbench.smoothing.noise import CopyNoise

SIGMA = 0.5


@pytest.fixture(scope="module")
def noisy_digits():
    x = get_dataset("digits", "test").images[:8]
    return x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def count_unet_calls(purifier, x, sigma):
    """Count calls by wrapping the network's forward itself, independently of ForwardCounter's hooks."""
    calls = []
    original = purifier.unet.forward

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    purifier.unet.forward = counting
    try:
        with ForwardCounter(purifier.networks) as counter:
            purify(purifier, x, sigma, CopyNoise.for_copies(0, sigma, 0, range(len(x))))
    finally:
        purifier.unet.forward = original
    assert counter.calls == len(calls) and counter.rows == sum(calls)
    return len(calls)


@pytest.mark.parametrize("name,params,expected", [
    ("sde", dict(steps=7), 7), ("pfode", dict(steps=6, solver="ddim"), 6), ("pfode", dict(steps=6, solver="heun"), 11),
    ("pfode", dict(steps=1, solver="heun"), 1), ("ddpm", {}, 1),
])
def test_nfe_counts_match_network_calls(tiny_ddpm, noisy_digits, name, params, expected):
    purifier = get_purifier(name, model=str(tiny_ddpm), **params)
    assert count_unet_calls(purifier, noisy_digits, SIGMA) == expected


def test_pfode_is_deterministic_and_does_not_mix_images(noisy_digits):
    purifier = get_purifier("pfode", steps=4, solver="heun")
    a = purifier(noisy_digits, SIGMA)
    assert torch.equal(a, purifier(noisy_digits, SIGMA))
    # Each image's output depends on that image alone, not on its batch mates.
    torch.testing.assert_close(purifier(noisy_digits[2:3], SIGMA), a[2:3], atol=1e-5, rtol=0)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == noisy_digits.shape


def test_ddim_solver_is_the_ddim_update(tiny_ddpm, noisy_digits):
    # DDIM with η = 0, written out by hand: x_{s} = √ᾱ_s·x̂0 + √(1−ᾱ_s)·ε̂ over the strided timesteps, then x̂0.
    purifier = get_purifier("pfode", steps=4, solver="ddim", model=str(tiny_ddpm))
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    t_star = int(np.argmax(np.sqrt((1 - alpha_bar) / alpha_bar) >= 2 * SIGMA))
    ts = sorted({int(round(v)) for v in np.linspace(t_star, 0, 4)}, reverse=True)
    x = np.sqrt(alpha_bar[t_star]) * (2 * noisy_digits.double() - 1)
    for i, t in enumerate(ts):
        with torch.no_grad():
            eps = purifier.unet(x.float(), torch.full((len(x),), t)).sample.double()
        x0 = (x - np.sqrt(1 - alpha_bar[t]) * eps) / np.sqrt(alpha_bar[t])
        a_next = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x = np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps
    expected = (x.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(purifier(noisy_digits, SIGMA), expected.float(), atol=2e-4, rtol=0)


def test_pfode_converges_to_a_fine_reference_and_heun_needs_fewer_calls(noisy_digits):
    # Reference: Heun over every integer timestep from t* to 0 (the finest grid the model has).
    reference = get_purifier("pfode", steps=1000, solver="heun")(noisy_digits, SIGMA)
    errors = {}
    for solver, steps_list in (("ddim", (5, 10, 20, 50, 100)), ("heun", (5, 10, 20, 50))):
        purifier = get_purifier("pfode", solver=solver, steps=5)
        for steps in steps_list:
            purifier.steps = steps
            with ForwardCounter(purifier.networks) as counter:
                out = purifier(noisy_digits, SIGMA)
            errors[solver, steps] = (counter.calls, rms(out, reference))
    for solver in ("ddim", "heun"):
        assert errors[solver, 50][1] < errors[solver, 5][1] / 3
    tol = 0.004

    def calls_to_reach(solver):
        return min((calls for (s, _), (calls, err) in errors.items() if s == solver and err <= tol), default=10**9)

    assert calls_to_reach("heun") < calls_to_reach("ddim")


def test_sde_noise_is_keyed_by_copy_not_by_batch(noisy_digits):
    purifier = get_purifier("sde", steps=5)
    assert purifier.stochastic

    def noise(seed, copies):
        return CopyNoise.for_copies(seed, SIGMA, 3, copies)

    a = purifier(noisy_digits, SIGMA, noise(1, range(8)))
    assert torch.equal(a, purifier(noisy_digits, SIGMA, noise(1, range(8))))
    assert rms(a, purifier(noisy_digits, SIGMA, noise(2, range(8)))) > 0.01
    # Copies 5..7 alone, in a batch of their own, get exactly the rows they got in the batch of 8.
    torch.testing.assert_close(purifier(noisy_digits[5:], SIGMA, noise(1, range(5, 8))), a[5:], atol=1e-6, rtol=0)
    assert a.min() >= 0 and a.max() <= 1


def test_one_step_limits_agree_with_ddpm(tiny_ddpm, noisy_digits):
    one_step = get_purifier("ddpm", model=str(tiny_ddpm))(noisy_digits, SIGMA)
    sde = get_purifier("sde", steps=1, model=str(tiny_ddpm))
    torch.testing.assert_close(sde(noisy_digits, SIGMA, CopyNoise.for_copies(0, SIGMA, 0, range(8))), one_step)
    torch.testing.assert_close(
        get_purifier("pfode", steps=1, solver="ddim", model=str(tiny_ddpm))(noisy_digits, SIGMA), one_step,
        atol=1e-5, rtol=0)


def test_bad_parameters(tiny_ddpm):
    with pytest.raises(InvalidArgument, match="unknown pfode solver 'rk4'"):
        get_purifier("pfode", solver="rk4", model=str(tiny_ddpm))
    with pytest.raises(InvalidArgument, match="steps must be >= 1"):
        get_purifier("sde", steps=0, model=str(tiny_ddpm))


def test_multistep_purifiers_run_through_bench_run(tmp_path, tiny_ddpm):
    out = tmp_path / "run"
    specs = f"sde:steps=3:model={tiny_ddpm},pfode:steps=3:solver=heun:model={tiny_ddpm}"
    assert main(["run", "--purifiers", specs, "--num-images", "2", "--sigmas", "0.5", "--n0", "4", "--n", "12",
                 "--batch-size", "5", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("purifier")
    assert summary.loc[f"sde(steps=3,model={tiny_ddpm})", "nfe"] == 3
    assert summary.loc[f"pfode(steps=3,solver=heun,model={tiny_ddpm})", "nfe"] == 5
    # sde's noise is keyed by (run seed, image, σ, copy): a second run gives the same rows.
    assert main(["run", "--purifiers", specs, "--num-images", "2", "--sigmas", "0.5", "--n0", "4", "--n", "12",
                 "--batch-size", "5", "--out", str(tmp_path / "again")]) == 0
    for file in out.glob("certify_sde*.tsv"):
        a = pd.read_csv(file, sep="\t").drop(columns="time")
        b = pd.read_csv(tmp_path / "again" / file.name, sep="\t").drop(columns="time")
        pd.testing.assert_frame_equal(a, b)
