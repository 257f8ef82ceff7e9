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
