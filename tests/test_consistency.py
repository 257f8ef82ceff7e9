"""Consistency models, distillation, fine-tuning, LPIPS distances and the consistency purifiers.

Tiny random models built here; expected values come from formulas written out in this file (Song et al.'s
parameterisation, Karras et al.'s grid, LPIPS's formula), not from the code under test. One test loads the
shipped weights.
"""

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

from benchbench.errors import CheckpointError, InvalidArgument
from benchbench.models.classifier import SmallCNN
from benchbench.models.consistency import ConsistencyModel, load_consistency, make_scheduler, top_up
from benchbench.models.ddpm_ve import DDPMAsVE
from benchbench.models.store import load_ddpm
from benchbench.smoothing.nfe import ForwardCounter
from benchbench.models.perceptual import ClassifierLPIPS, L2Distance, get_distance
from benchbench.smoothing.noise import CopyNoise

N, SIGMA_MAX = 12, 80.0  # the tiny models' grid


def karras_grid(n, sigma_min=0.002, sigma_max=SIGMA_MAX, rho=7.0):
    """Karras et al. (2022) eq. 5, descending, in float64."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def reference_f(unet, x, sigma, sigma_min=0.002, sigma_data=0.5):
    """Song et al. (2023) App. C: c_skip = σ_d²/((σ−σ_min)² + σ_d²),
    c_out = (σ−σ_min)·σ_d/√(σ² + σ_d²); c_in = 1/√(σ² + σ_d²) and time input 250·ln σ as in diffusers'
    consistency-model pipeline."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / math.sqrt(sigma**2 + sigma_data**2)
    with torch.no_grad():
        out = unet(c_in * x, torch.full((len(x),), 250 * math.log(sigma))).sample
    return c_skip * x + c_out * out


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


@pytest.fixture
def tiny_cm():
    return ConsistencyModel(tiny_unet(), make_scheduler(N, sigma_max=SIGMA_MAX)).eval()


@pytest.fixture(scope="module")
def tiny_cm_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-cm")
    ConsistencyModel(tiny_unet(), make_scheduler(N, sigma_max=SIGMA_MAX)).save_pretrained(path)
    return path


@pytest.fixture
def tiny_lpips():
    torch.manual_seed(1)
    return ClassifierLPIPS(SmallCNN(width=4, feature_dim=16).body)


def test_boundary_condition_is_exact(tiny_cm):
    x = torch.randn(5, 1, 8, 8)
    x[0] = 0.0
    with torch.no_grad():
        assert torch.equal(tiny_cm(x, 0.002), x)
        assert torch.equal(tiny_cm(x, torch.full((5,), 0.002)), x)
        assert torch.equal(tiny_cm(x, float(tiny_cm.sigmas[-1])), x)  # the grid's last level is σ_min itself
        assert not torch.allclose(tiny_cm(x, 1.0), x)  # away from σ_min the network does act


def test_model_matches_song_et_al_parameterisation_and_karras_grid(tiny_cm):
    np.testing.assert_allclose(tiny_cm.sigmas.numpy(), karras_grid(N), rtol=1e-12)
    x = torch.randn(3, 1, 8, 8)
    for sigma in (0.01, 0.7, SIGMA_MAX):
        with torch.no_grad():
            torch.testing.assert_close(tiny_cm(x, sigma), reference_f(tiny_cm.unet, x, sigma), atol=1e-5, rtol=1e-5)


def test_saved_model_reloads_through_diffusers_own_pipeline(tiny_cm_folder):
    pipe = ConsistencyModelPipeline.from_pretrained(tiny_cm_folder)
    assert isinstance(pipe.scheduler, CMStochasticIterativeScheduler) and pipe.scheduler.config.num_train_timesteps == N
    pipe.set_progress_bar_config(disable=True)
    got = pipe(batch_size=3, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt").images
    # Pipeline one-step sampling from σ_max·z, with z from the same generator, by the paper's formula.
    z = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = (reference_f(pipe.unet, SIGMA_MAX * z, SIGMA_MAX).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # benchbench's loader reads the same folder.
    model = load_consistency(str(tiny_cm_folder))
    assert torch.equal(model.unet.conv_in.weight, pipe.unet.conv_in.weight)
    with pytest.raises(CheckpointError, match="consistency-ft"):
        load_consistency(str(tiny_cm_folder / "missing"), kind="consistency-ft")


def test_top_up_adds_exactly_the_missing_variance_and_nothing_on_the_grid():
    grid = karras_grid(N)
    sigmas = torch.from_numpy(grid.copy())
    level = 1.0  # 2σ for σ = 0.5
    k_expected = int(np.nonzero(grid >= level)[0][-1])  # smallest grid level at or above 2σ
    assert grid[k_expected] > level > grid[k_expected + 1]
    x = torch.zeros(20000, 1, 8, 8)
    out, k = top_up(x, level, sigmas, torch.Generator().manual_seed(3))
    assert k == k_expected
    std = math.sqrt(grid[k] ** 2 - level**2)
    torch.testing.assert_close(out, std * torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    assert out.var().item() == pytest.approx(grid[k] ** 2 - level**2, rel=0.01)
    # On the grid: the input comes back untouched and the generator is not used.
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    x = torch.randn(4, 1, 8, 8)
    out, k = top_up(x, float(grid[4]), sigmas, gen)
    assert k == 4 and out is x and torch.equal(gen.get_state(), state)
    with pytest.raises(InvalidArgument, match="2σ"):
        top_up(x, 100.0, sigmas)


def test_purifier_is_top_up_then_one_call(tiny_cm_folder):
    purifier = _direct(tiny_cm_folder)
    grid = karras_grid(N)
    x_noisy = torch.rand(4, 1, 8, 8) + 0.3 * torch.randn(4, 1, 8, 8)
    unet = UNet2DModel.from_pretrained(tiny_cm_folder, subfolder="unet").eval()
    for sigma in (float(grid[6]) / 2, 0.3):  # on the grid, then off it
        k = int(np.nonzero(grid >= 2 * sigma * (1 - 1e-9))[0][-1])
        noise = CopyNoise.for_copies(11, sigma, 2, range(4))
        with ForwardCounter(purifier.networks) as count:
            got = purifier(x_noisy, sigma, noise)
        assert count.calls == 1 and got.min() >= 0 and got.max() <= 1
        extra = math.sqrt(max(grid[k] ** 2 - 4 * sigma**2, 0.0))
        # The top-up noise of copy c is the first draw of that copy's own stream.
        z = CopyNoise.for_copies(11, sigma, 2, range(4)).randn_like(x_noisy) if extra > 1e-6 else 0.0
        x_in = 2 * x_noisy - 1 + extra * z
        expected = (reference_f(unet, x_in, float(grid[k])).clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Multistep: one network call per step.
    multi = _direct(tiny_cm_folder, steps=3)
    with ForwardCounter(multi.networks) as count:
        a = multi(x_noisy, 0.25, CopyNoise.for_copies(0, 0.25, 0, range(4)))
    assert count.calls == 3
    # Each copy's output depends on its own key alone: copy 3 alone gives its row of the batch.
    torch.testing.assert_close(multi(x_noisy[3:], 0.25, CopyNoise.for_copies(0, 0.25, 0, [3])), a[3:],
                               atol=1e-6, rtol=0)
    with pytest.raises(InvalidArgument, match="steps"):
        _direct(tiny_cm_folder, steps=N)


def _direct(folder, steps=1):
    from purifiers.consistency import ConsistencyPurifier

    return ConsistencyPurifier(model=str(folder), steps=steps, sigma_mode="topup")


def test_a_few_distillation_steps_lower_the_consistency_loss(tiny_ddpm, tiny_lpips):
    from benchbench.train.distill import DistillConfig, build_student, distillation_loss

    unet, scheduler = load_ddpm(str(tiny_ddpm))
    teacher = DDPMAsVE(unet.requires_grad_(False), scheduler)
    student = build_student(unet, DistillConfig(num_levels=N)).train()
    target = copy.deepcopy(student).requires_grad_(False)
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def loss_at():
        return distillation_loss(student, target, teacher, x0, tiny_lpips, torch.Generator().manual_seed(1))

    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    with torch.no_grad():
        before = loss_at().item()
    for _ in range(8):
        loss = loss_at()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # θ⁻ ← 0.95·θ⁻ + 0.05·θ
            for p_t, p in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p, 0.05)
    with torch.no_grad():
        after = loss_at().item()
    assert after < 0.8 * before


def test_a_few_finetuning_steps_lower_the_lpips_objective(tiny_cm, tiny_lpips):
    from benchbench.train.finetune import finetune_loss

    model = tiny_cm.train()
    x = torch.rand(18, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def loss_at():
        return finetune_loss(model, x, (0.25, 0.5, 1.0), tiny_lpips, torch.Generator().manual_seed(2))

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = loss_at().item()
    for _ in range(8):
        loss = loss_at()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at().item()
    assert after < 0.8 * before


def test_classifier_lpips_follows_the_lpips_formula(tiny_lpips):
    a, b = torch.rand(3, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1
    body = tiny_lpips.body
    expected = torch.zeros(3)
    fa, fb = a, b
    with torch.no_grad():
        for layer in body:
            fa, fb = layer(fa), layer(fb)
            if isinstance(layer, torch.nn.ReLU):  # after each of the three convolutions
                na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                expected += (na - nb).pow(2).sum(1).mean((1, 2))
        torch.testing.assert_close(tiny_lpips(a, b), expected)
        assert torch.equal(tiny_lpips(a, a), torch.zeros(3))
        torch.testing.assert_close(L2Distance()(a, b), ((a - b) ** 2).mean((1, 2, 3)))


@pytest.mark.parametrize("net,file", [("vgg", "vgg16-397923af.pth"), ("alex", "alexnet-owt-7be5be79.pth")])
def test_missing_lpips_backbone_is_one_line_naming_the_file(tmp_path, monkeypatch, net, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        get_distance(net)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / file) in message


def test_shipped_consistency_models_load_and_purify():
    from benchbench.models.store import embedded_path, read_manifest

    for kind, cls in (("consistency", "ConsistencyPurifier"), ("consistency-ft", "ConsistencyFTPurifier")):
        pipe = ConsistencyModelPipeline.from_pretrained(embedded_path("digits", kind))
        assert pipe.unet.config.sample_size == 8 and isinstance(pipe.scheduler, CMStochasticIterativeScheduler)
        manifest = read_manifest("digits", kind)
        assert manifest["training_config"]["seed"] == 0 and manifest["training_config"]["distance"] == "digits-ssl"
        import purifiers.consistency as module

        purifier = getattr(module, cls)()
        assert "distance=digits-ssl" in purifier.fingerprint
        x = torch.rand(2, 1, 8, 8)
        out = purifier(x + 0.5 * torch.randn(2, 1, 8, 8), 0.5, CopyNoise.for_copies(0, 0.5, 0, range(2)))
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1


def test_shipped_consistency_manifests_reproduce_on_val():
    """RobustBench-style: the purification numbers each manifest claims (val split, its σ mode) are what the
    shipped weights still give, and its recorded checks agree with its own numbers."""
    from benchbench.data.dataset import get_dataset
    from benchbench.models.classifiers import load_classifier
    from benchbench.models.store import read_manifest
    from benchbench.train.acceptance import purification_scores

    val = get_dataset("digits", "val")
    for kind in ("consistency", "consistency-ft"):
        metrics = read_manifest("digits", kind)["metrics"]
        assert metrics["split"] == "val"
        got = purification_scores(load_consistency("digits", "cpu", kind), val.images, val.labels,
                                  load_classifier("digits"), get_distance(metrics["purification_distance"]),
                                  (0.5,), sigma_mode=metrics["purification_sigma_mode"])
        for key in ("lpips", "mse", "accuracy"):
            assert got["0.5"][key] == pytest.approx(metrics["purification"]["0.5"][key], rel=1e-3, abs=1e-4)
    ft = read_manifest("digits", "consistency-ft")["metrics"]
    reduction = {s: 1 - ft["purification"][s]["lpips"] / ft["base"]["purification"][s]["lpips"]
                 for s in ft["purification"]}
    assert reduction == pytest.approx(ft["lpips_reduction_vs_base"])
    assert ft["checks"]["lpips_10pct_lower_at_every_sigma"] == all(r >= 0.10 for r in reduction.values())
    assert ft["checks"]["fd_within_1.5x_base"] == (ft["fd_one_step"] <= 1.5 * ft["base"]["fd_one_step"])
