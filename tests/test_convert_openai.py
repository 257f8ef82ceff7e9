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
    # DDS's ImageNet use: 56 = 64·7/8 as 224 = 256·7/8, the same four halvings.
    "dds-imagenet": ["image_size=64", "channel_mult=1,1,2,2", "num_channels=32", "num_head_channels=32",
                     "num_res_blocks=1", "run_size=56"],
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
    size = flags["run_size"] or flags["image_size"]
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
                                             ("guided-256-uncond", (0.25, 0.5, 1.0)),
                                             ("dds-imagenet", (0.25, 0.5, 1.0))])
def test_ddpm_purifier_equals_dds_pred_xstart(world, profile, sigmas):
    """DDS: t* = the first t whose √(1−ᾱ)/√ᾱ reaches 2σ, x_t = √ᾱ_{t*}·(2·x_noisy − 1), then improved-diffusion's
    pred_xstart (clip_denoised=True) from the network fed t* (·1000/T with rescale_timesteps)."""
    from purifiers.ddpm import DDPMPurifier
    from purifiers.diffusion import matching_timestep

    folder, ref, flags = world[profile]
    purifier = DDPMPurifier(model=str(folder))
    diffusion = Diffusion(flags["noise_schedule"], flags["diffusion_steps"], flags["rescale_timesteps"])
    size = flags["run_size"] or flags["image_size"]
    assert purifier.image_shape == (3, size, size)  # what the harness checks against the dataset
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
    labels = labels_for(flags, 2, seed=4)
    purifier = ConsistencyPurifier(model=str(folder), sigma_mode=mode, class_label="predicted",
                                   classifier=FixedLabels(labels))
    assert len(purifier.model.sigmas) == 40 and purifier.model.sigma_max == 80.0
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, size, size, generator=g)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        x_noisy = x + sigma * torch.randn(x.shape, generator=g)
        level = assumed_level(purifier.model.sigmas, sigma, mode)
        with torch.no_grad():
            theirs = cm_denoise(ref, 2 * x_noisy - 1, torch.full((2,), level), labels).clamp(-1, 1)
            ours = 2 * purifier(x_noisy, sigma) - 1
        assert (theirs.abs() < 1).float().mean() > 0.1
        assert record(f"consistency {mode} sigma={sigma}", (ours - theirs).abs().max().item()) <= TOL


@pytest.mark.parametrize("spec", ["sde:steps=3", "pfode:steps=3:solver=heun", "pfode:steps=3:solver=ddim",
                                  "densepure:k=2:steps=3"])
def test_every_diffusion_purifier_feeds_the_network_the_rescaled_timestep(world, spec):
    """With rescale_timesteps (1000/T = 0.25 for T = 4000) the UNet sees t·0.25 for every scheduler step t."""
    from benchbench.registry import get_purifier
    from benchbench.smoothing.noise import CopyNoise
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


@pytest.mark.parametrize("profile, change, match", [
    ("dds-cifar10", ["class_cond=True"], "lacks key 'label_emb.weight'.*check class_cond"),
    ("guided-64-cond", ["class_cond=False"], "key 'label_emb.weight' is not in the network.*check class_cond"),
    ("dds-cifar10", ["learn_sigma=False"], "'out.2.weight' has shape \\(6, 32, 3, 3\\).*check learn_sigma"),
    ("dds-cifar10", ["num_channels=64"], "'time_embed.0.weight' has shape.*check num_channels"),
    ("dds-cifar10", ["attention_resolutions=16"], "'input_blocks.5.1.norm.weight' is not.*attention_resolutions"),
    ("dds-cifar10", ["use_scale_shift_norm=False"], "emb_layers.1.weight' has shape.*use_scale_shift_norm"),
    ("guided-256-uncond", ["resblock_updown=False"], "check resblock_updown"),
    ("dds-cifar10", ["num_res_blocks=2"], "'input_blocks.2.0.op.weight' is not.*check resblock_updown or num_res_"),
])
def test_flags_that_do_not_match_the_checkpoint_are_one_line_and_write_nothing(world, tmp_path, capsys, profile,
                                                                               change, match):
    folder, _, _ = world[profile]
    ckpt = folder.parent / f"{profile}.pt"
    out = tmp_path / "out"
    sets = [a for s in REDUCED[profile] + change for a in ("--set", s)]
    assert main(["convert", "openai-unet", str(ckpt), "--out", str(out), "--profile", profile, *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bench: error: ")
    assert __import__("re").search(match, err), err
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind


def test_bad_files_and_names_are_one_line_and_write_nothing(world, tmp_path, capsys):
    ckpt = world["dds-cifar10"][0].parent / "dds-cifar10.pt"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint at all")
    not_weights = tmp_path / "not_weights.pt"
    torch.save({"epoch": 3}, not_weights)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing.pt")], "no checkpoint file"),
        ([str(corrupt)], "cannot read"),
        ([str(not_weights)], "not a state_dict"),
        ([str(ckpt), "--profile", "dds-cifar100"], "unknown profile 'dds-cifar100'"),
        ([str(ckpt), "--set", "num_chanels=32"], "--set num_chanels: unknown flag"),
        ([str(ckpt), "--set", "num_channels=wide"], "--set num_channels=wide"),
        ([str(ckpt), "--set", "learn_sigma=maybe"], "expected True or False"),
        ([str(ckpt), "--set", "noise_schedule=sqrt", "--set", "num_channels=32", "--set", "num_res_blocks=1",
          "--profile", "dds-cifar10"], "noise_schedule='sqrt'"),
        ([str(ckpt), "--set", "num_heads=3", "--profile", "dds-cifar10"], "num_heads=3 does not divide"),
        ([str(ckpt), "--set", "num_channels=48"], "32-group norms need multiples of 32"),
        ([str(ckpt), "--set", "channel_mult=1,two"], "channel_mult='1,two'"),
    ]
    for args, match in cases:
        assert main(["convert", "openai-unet", *args[:1], "--out", str(out), *args[1:]]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, (args, err)
        assert "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before
    existing = world["dds-cifar10"][0]
    assert main(["convert", "openai-unet", str(ckpt), "--out", str(existing), "--profile", "dds-cifar10"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"attention_heads": {"mid": 0}}',
                                  '{"timestep_scale": "fast"}'])
def test_a_corrupt_conversion_record_is_a_checkpoint_error(world, tmp_path, text):
    import shutil

    from benchbench.errors import CheckpointError
    from benchbench.models.store import load_ddpm

    folder = tmp_path / "copy"
    shutil.copytree(world["dds-cifar10"][0], folder)
    (folder / "conversion.json").write_text(text)
    with pytest.raises(CheckpointError, match="conversion.json"):
        load_ddpm(str(folder))


def test_conversion_record_names_its_source_and_timestep_scale(world):
    import json

    folder, _, _ = world["dds-cifar10"]
    record = json.loads((folder / "conversion.json").read_text())
    assert record["timestep_scale"] == 0.25
    assert record["source"]["checkpoint"] == "dds-cifar10.pt" and len(record["source"]["sha256"]) == 64
    assert record["source"]["profile"] == "dds-cifar10" and record["source"]["flags"]["num_channels"] == 32
    assert json.loads((world["guided-256-uncond"][0] / "conversion.json").read_text())["timestep_scale"] == 1.0
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["num_train_timesteps"], scheduler["beta_schedule"]) == (4000, "squaredcos_cap_v2")
    assert scheduler["variance_type"] == "learned_range"


def test_profiles_carry_the_published_flags():
    """The numbers the originals' READMEs and launch scripts give (sources in the README)."""
    dds = resolve_flags("dds-cifar10")
    assert (dds["image_size"], dds["num_channels"], dds["num_res_blocks"], dds["num_heads"]) == (32, 128, 3, 4)
    assert (dds["attention_resolutions"], dds["dropout"], dds["diffusion_steps"]) == ("16,8", 0.3, 4000)
    assert dds["learn_sigma"] and dds["use_scale_shift_norm"] and dds["rescale_timesteps"]
    assert dds["noise_schedule"] == "cosine" and not dds["class_cond"]
    g256 = resolve_flags("guided-256-uncond")
    assert (g256["image_size"], g256["num_channels"], g256["num_head_channels"], g256["num_res_blocks"]) == (
        256, 256, 64, 2)
    assert g256["resblock_updown"] and g256["learn_sigma"] and not g256["use_new_attention_order"]
    assert (g256["noise_schedule"], g256["diffusion_steps"], g256["attention_resolutions"]) == ("linear", 1000,
                                                                                                  "32,16,8")
    g64 = resolve_flags("guided-64-cond")
    assert (g64["image_size"], g64["num_channels"], g64["num_res_blocks"], g64["dropout"]) == (64, 192, 3, 0.1)
    assert g64["class_cond"] and g64["use_new_attention_order"] and g64["noise_schedule"] == "cosine"
    cm = resolve_flags("cm-imagenet64")
    assert (cm["num_channels"], cm["num_res_blocks"], cm["num_head_channels"], cm["steps"]) == (192, 3, 64, 40)
    assert cm["class_cond"] and cm["resblock_updown"] and cm["use_scale_shift_norm"] and not cm["learn_sigma"]
    assert (cm["sigma_min"], cm["sigma_max"]) == (0.002, 80.0)
    dds_in = resolve_flags("dds-imagenet")
    assert {**dds_in, "run_size": 0} == g256 and dds_in["run_size"] == 224  # the same file, run at 224 px
    lsun = resolve_flags("cm-lsun256")
    assert (lsun["image_size"], lsun["num_channels"], lsun["use_scale_shift_norm"]) == (256, 256, False)
    assert set(PROFILES) == set(REDUCED)


SMALL = ["--num-images", "2", "--n0", "2", "--n", "4", "--sigmas", "0.25", "--batch-size", "6", "--alpha", "0.1",
         "--no-report"]


def run_rows(out: Path) -> dict[str, list[list[str]]]:
    import json

    files = json.loads((out / "config.json").read_text())["files"]
    return {f["purifier"].split("(")[0]: [r.split("\t") for r in (out / f["file"]).read_text().splitlines()[1:]]
            for f in files}


def test_bench_run_takes_a_converted_dds_cifar10_folder(world, tmp_path):
    from realworld import save_tiny_vit, write_cifar10

    folder = world["dds-cifar10"][0]
    data, vit = write_cifar10(tmp_path / "cifar"), save_tiny_vit(tmp_path / "vit10")
    out = tmp_path / "run"
    purifiers = f"ddpm:model={folder},pfode:model={folder}:steps=2,densepure:model={folder}:k=2"
    assert main(["run", "--dataset", "cifar10", "--data-dir", str(data), "--classifier", f"hf:{vit}",
                 "--purifiers", purifiers, "--out", str(out), *SMALL]) == 0
    rows = run_rows(out)
    assert list(rows) == ["ddpm", "pfode", "densepure"]
    for name, nfe in {"ddpm": 1.0, "pfode": 3.0, "densepure": 20.0}.items():  # heun: 2·steps − 1; K·steps (10)
        assert len(rows[name]) == 2 and all(float(r[7]) == nfe for r in rows[name]), name


def test_bench_run_takes_a_converted_cm_imagenet64_folder(world, tmp_path):
    from realworld import save_tiny_vit, write_class_map, write_imagenet64

    folder = world["cm-imagenet64"][0]
    data, vit = write_imagenet64(tmp_path / "imagenet", n=3), save_tiny_vit(tmp_path / "vit1000", num_labels=1000)
    write_class_map(data / "Imagenet64_val_npz")  # labels in sorted-wnid order, as class-conditional models number them
    out = tmp_path / "run"
    assert main(["run", "--dataset", "imagenet64", "--data-dir", str(data), "--classifier", f"hf:{vit}",
                 "--purifiers", f"consistency:model={folder}", "--out", str(out), *SMALL]) == 0
    rows = run_rows(out)
    assert list(rows) == ["consistency"] and len(rows["consistency"]) == 2
    assert all(float(r[7]) == 1.0 for r in rows["consistency"])


@pytest.mark.parametrize("name", ["ddpm", "sde", "pfode", "densepure"])
def test_a_class_conditional_ddpm_is_refused_by_the_diffusion_purifiers(world, name):
    """guided-64-cond converts exactly (above), but ddpm/sde/pfode/densepure give the UNet no class label."""
    from benchbench.errors import BenchError
    from benchbench.registry import get_purifier

    with pytest.raises(BenchError, match="is class-conditional \\(1000 classes\\)"):
        get_purifier(name, model=str(world["guided-64-cond"][0]))


def test_heads_of_different_widths_convert_exactly(tmp_path):
    """A fixed num_heads over levels of different widths (improved-diffusion's ImageNet-64 and guided-diffusion's
    128×128 models) gives heads of different widths, which UNet2DModel's one attention_head_dim cannot say:
    the folder records each attention's heads and the loader sets them."""
    import json

    from benchbench.models.store import load_ddpm

    sets = ["image_size=32", "channel_mult=1,2,3", "num_channels=32", "num_res_blocks=1", "num_heads=4",
            "num_heads_upsample=2", "attention_resolutions=16,8", "learn_sigma=True", "diffusion_steps=4000",
            "noise_schedule=cosine", "rescale_timesteps=True"]
    flags = resolve_flags(None, sets)
    ref = randomize(reference_model(flags), 7)
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    folder = tmp_path / "folder"
    assert main(["convert", "openai-unet", str(tmp_path / "model.pt"), "--out", str(folder),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    heads = json.loads((folder / "conversion.json").read_text())["attention_heads"]
    assert heads["down_blocks.2.attentions.0"] == 4 and heads["up_blocks.0.attentions.0"] == 2
    unet, _ = load_ddpm(str(folder))
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.tensor([10, 3000])
    with torch.no_grad():
        diff = (unet(x, t).sample - ref(x, t.float() * 0.25)).abs().max().item()
    assert record("network unequal head widths", diff) <= TOL


@pytest.mark.parametrize("run_size", ["60", "4", "0x"])
def test_a_run_size_the_network_cannot_halve_is_one_line(world, tmp_path, capsys, run_size):
    folder, ref, flags = world["dds-imagenet"]
    ckpt = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), ckpt)
    sets = [a for s in REDUCED["dds-imagenet"][:-1] + [f"run_size={run_size}"] for a in ("--set", s)]
    assert main(["convert", "openai-unet", str(ckpt), "--out", str(tmp_path / "out"), "--profile", "dds-imagenet",
                 *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run_size" in err
    assert not (tmp_path / "out").exists()
