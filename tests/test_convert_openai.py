"""`bench convert openai-unet`: converted folders compute what the original code computes.

Every check compares against tests/reference/openai_unet.py, an independent re-implementation of openai's
UNetModel and of the originals' formulas; the checkpoints are that module's state_dicts in the original
key layout, saved with torch.save. Reduced widths, depths and image sizes keep it fast; the architecture
of each profile is otherwise the published one. MAX_DIFF collects the measured differences (printed with
pytest -s; the README quotes them).
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference.openai_unet import Diffusion, cm_denoise, randomize, reference_model  # noqa: E402

from benchbench.cli import main  # noqa: E402
from benchbench.models.openai_unet import PROFILES, resolve_flags  # noqa: E402

TOL = 1e-5
# Reduced sizes of each profile (width, depth, image size); everything else is the profile's.
REDUCED = {
    "dds-cifar10": ["num_channels=32", "num_res_blocks=1"],
    "guided-256-uncond": ["image_size=64", "channel_mult=1,1,2,2", "num_channels=32", "num_head_channels=32",
                          "num_res_blocks=1"],
    "guided-64-cond": ["num_channels=32", "num_head_channels=32", "num_res_blocks=1"],
    "cm-imagenet64": ["num_channels=32", "num_head_channels=32", "num_res_blocks=1"],
    "cm-lsun256": ["image_size=64", "channel_mult=1,1,2,2", "num_channels=32", "num_head_channels=32",
                   "num_res_blocks=1"],
}
MAX_DIFF: dict[str, float] = {}


def record(name: str, diff: float) -> float:
    MAX_DIFF[name] = diff
    print(f"\n{name}: max |diff| = {diff:.3g}")
    return diff


def converted(profile: str, root: Path, seed: int = 0):
    """(folder, reference network, flags): a random reference UNet of the reduced profile, saved as an
    original checkpoint and converted with the CLI."""
    flags = resolve_flags(profile, REDUCED[profile])
    ref = randomize(reference_model(flags), seed)
    ckpt = root / f"{profile}.pt"
    torch.save(ref.state_dict(), ckpt)
    folder = root / profile
    sets = [a for s in REDUCED[profile] for a in ("--set", s)]
    assert main(["convert", "openai-unet", str(ckpt), "--out", str(folder), "--profile", profile, *sets]) == 0
    return folder, ref, flags


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    return {profile: converted(profile, root, seed=i) for i, profile in enumerate(REDUCED)}


def labels_for(flags, n, seed=0):
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed)) if flags["class_cond"] else None


@pytest.mark.parametrize("profile", list(REDUCED))
def test_converted_network_equals_the_original_forward_pass(world, profile):
    from benchbench.models.consistency import load_consistency
    from benchbench.models.store import load_ddpm

    folder, ref, flags = world[profile]
    size = flags["image_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g)
    y = labels_for(flags, 2)
    with torch.no_grad():
        if flags["training_mode"]:
            unet = load_consistency(str(folder)).unet
            t = 250 * torch.log(torch.tensor([0.01, 2.0]))  # what consistency_models feeds at σ = 0.01, 2
            ours, theirs = unet(x, t, class_labels=y).sample, ref(x, t, y)
        else:
            unet, _ = load_ddpm(str(folder))
            diffusion = Diffusion(flags["noise_schedule"], flags["diffusion_steps"], flags["rescale_timesteps"])
            t = torch.tensor([3, flags["diffusion_steps"] - 7])
            ours, theirs = unet(x, t, class_labels=y).sample, ref(x, diffusion.model_t(t), y)
    assert ours.shape == theirs.shape == (2, 6 if flags["learn_sigma"] else 3, size, size)
    assert theirs.abs().mean() > 0.1  # random weights: nothing cancels out
    assert record(f"network {profile}", (ours - theirs).abs().max().item()) <= TOL


@pytest.mark.parametrize("profile, sigmas", [("dds-cifar10", (0.12, 0.25, 0.5, 1.0)),
                                             ("guided-256-uncond", (0.25, 0.5, 1.0))])
def test_ddpm_purifier_equals_dds_pred_xstart(world, profile, sigmas):
    """DDS: t* = the first t whose √(1−ᾱ)/√ᾱ reaches 2σ, x_t = √ᾱ_{t*}·(2·x_noisy − 1), then improved-diffusion's
    pred_xstart (clip_denoised=True) from the network fed t* (·1000/T with rescale_timesteps)."""
    from purifiers.ddpm import DDPMPurifier
    from purifiers.diffusion import matching_timestep

    folder, ref, flags = world[profile]
    purifier = DDPMPurifier(model=str(folder))
    diffusion = Diffusion(flags["noise_schedule"], flags["diffusion_steps"], flags["rescale_timesteps"])
    size = flags["image_size"]
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, size, size, generator=g)
    for sigma in sigmas:
        x_noisy = x + sigma * torch.randn(x.shape, generator=g)
        t = diffusion.dds_timestep(sigma)
        assert matching_timestep(purifier.alphas_cumprod, sigma) == t
        x_t = float(diffusion.alphas_cumprod[t] ** 0.5) * (2 * x_noisy - 1)
        with torch.no_grad():
            theirs = diffusion.pred_xstart(ref, x_t, t)
            ours = 2 * purifier(x_noisy, sigma) - 1
        assert theirs.abs().max() > 0.5 and (theirs.abs() < 1).float().mean() > 0.1  # not all clipped
        assert record(f"ddpm {profile} sigma={sigma}", (ours - theirs).abs().max().item()) <= TOL


class FixedLabels(torch.nn.Module):
    """A classifier stub that 'predicts' given labels, so class_label=predicted feeds the UNet known classes."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def forward(self, x):
        return torch.nn.functional.one_hot(self.labels[: len(x)], 1000).float()


@pytest.mark.parametrize("mode", ["exact", "nearest"])
def test_consistency_purifier_equals_consistency_models_denoise(world, mode):
    """consistency_models' denoise (boundary-condition c_skip, c_out, c_in with σ_data = 0.5, the network fed
    250·ln(σ + 1e-44)), clipped, at the level the purifier's sigma_mode calls the model at."""
    from benchbench.models.consistency import assumed_level
    from purifiers.consistency import ConsistencyPurifier

    folder, ref, flags = world["cm-imagenet64"]
    size = flags["image_size"]
    labels = labels_for(flags, 3, seed=4)
    purifier = ConsistencyPurifier(model=str(folder), sigma_mode=mode, class_label="predicted",
                                   classifier=FixedLabels(labels))
    assert len(purifier.model.sigmas) == 40 and purifier.model.sigma_max == 80.0
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, size, size, generator=g)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        x_noisy = x + sigma * torch.randn(x.shape, generator=g)
        level = assumed_level(purifier.model.sigmas, sigma, mode)
        with torch.no_grad():
            theirs = cm_denoise(ref, 2 * x_noisy - 1, torch.full((3,), level), labels).clamp(-1, 1)
            ours = 2 * purifier(x_noisy, sigma) - 1
        assert (theirs.abs() < 1).float().mean() > 0.1
        assert record(f"consistency {mode} sigma={sigma}", (ours - theirs).abs().max().item()) <= TOL


@pytest.mark.parametrize("spec", ["sde:steps=3", "pfode:steps=3:solver=heun", "pfode:steps=3:solver=ddim",
                                  "densepure:k=2:steps=3"])
def test_every_diffusion_purifier_feeds_the_network_the_rescaled_timestep(world, spec):
    """With rescale_timesteps (1000/T = 0.25 for T = 4000) the UNet sees t·0.25 for every scheduler step t."""
    from benchbench.registry import get_purifier
    from benchbench.seeding import CopyNoise
    from purifiers.diffusion import matching_timestep, strided_timesteps

    folder, _, flags = world["dds-cifar10"]
    name, *params = spec.split(":")
    kwargs = {k: (v if k == "solver" else int(v)) for k, v in (p.split("=") for p in params)}
    purifier = get_purifier(name, model=str(folder), **kwargs)
    seen = []
    inner = purifier.unet.unet  # the UNet2DModel inside the timestep wrapper
    handle = inner.register_forward_pre_hook(lambda m, a, kw: seen.append(float(a[1].flatten()[0])), with_kwargs=True)
    x = torch.rand(2, 3, 32, 32)
    try:
        with torch.no_grad():
            if getattr(purifier, "stochastic", False):
                purifier(x, 0.5, CopyNoise(0, 0.5, [0, 1], [0, 0]))
            else:
                purifier(x, 0.5)
    finally:
        handle.remove()
    if name == "pfode":
        steps = [float(t) for t in purifier.sampler.timesteps]  # Heun's repeats its interior timesteps
    else:
        steps = strided_timesteps(matching_timestep(purifier.alphas_cumprod, 0.5), kwargs["steps"])
    assert seen == pytest.approx([t * 1000 / flags["diffusion_steps"] for t in steps], abs=1e-4)
