"""A fair comparison: the validation split, the independent perceptual network, consistency σ
modes, the Cohen et al. and DensePure baselines, presets and the two-panel Pareto figure.

Expected values come from formulas written out here (DDPM posterior, NT-Xent, LPIPS, Karras grid), from
diffusers' own scheduler, or from the shipped manifests (RobustBench-style reproduction).
"""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from benchbench.cli import main
from benchbench.data.dataset import get_dataset
from benchbench.models.consistency import ConsistencyModel, make_scheduler
from benchbench.models.classifiers import load_classifier
from benchbench.models.store import embedded_path, read_manifest
from benchbench.smoothing.noise import CopyNoise
# The independent references (Karras grid, Song et al.'s scalings) and the tiny models' grid, written once.
from test_consistency import N, SIGMA_MAX, karras_grid, reference_f


@pytest.fixture(scope="module")
def tiny_cm_folder(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    path = tmp_path_factory.mktemp("tiny-cm")
    ConsistencyModel(unet, make_scheduler(N, sigma_max=SIGMA_MAX)).save_pretrained(path)
    return path


# --- the validation split --------------------------------------------------------------------------------

def test_digits_train_val_test_are_the_documented_disjoint_parts():
    from sklearn.datasets import load_digits

    order = np.random.RandomState(0).permutation(1797)
    raw = load_digits()
    parts = {s: get_dataset("digits", s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 1147, "val": 200, "test": 450}
    for split, idx in (("train", order[:1147]), ("val", order[1147:1347]), ("test", order[1347:])):
        np.testing.assert_array_equal(parts[split].labels.numpy(), raw.target[idx])
        np.testing.assert_allclose(parts[split].images[:, 0].numpy(), raw.images[idx] / 16.0)


def test_every_shipped_model_reports_metrics_on_val_and_trained_on_train_only():
    kinds = ("classifier", "perceptual", "ddpm", "consistency", "consistency-ft", "classifier-noise-0.25",
             "classifier-noise-0.5", "classifier-noise-1")
    for kind in kinds:
        manifest = read_manifest(str(embedded_path("digits", kind)), kind)
        split = manifest["training_config"]["split"]
        assert split["train"] == 1147 and split["val"] == 200 and split["metrics_on"] == "val", kind
        # The test split is read by `bench run` only: no shipped model reports a number measured on it.
        assert "test" not in json.dumps(manifest["metrics"]).lower(), kind
    # The consistency models descend from the shipped DDPM, which saw train only.
    from benchbench.models.store import fingerprint

    assert read_manifest("digits", "consistency")["training_config"]["teacher_fingerprint"] == fingerprint("digits", "ddpm")
    assert read_manifest("digits", "consistency-ft")["training_config"]["base_fingerprint"] == fingerprint("digits", "consistency")
    # The classifier's claimed val accuracy is what it still reaches.
    manifest = read_manifest("digits", "classifier")
    val = get_dataset("digits", "val")
    with torch.no_grad():
        acc = (load_classifier("digits")(val.images).argmax(1) == val.labels).float().mean().item()
    assert acc == pytest.approx(manifest["metrics"]["val_accuracy"], abs=1e-6) and acc >= 0.95


# --- the independent perceptual network ------------------------------------------------------------------

def test_perceptual_network_is_not_the_certified_classifier():
    perceptual, classifier = read_manifest("digits", "perceptual"), read_manifest("digits", "classifier")
    assert perceptual["training_config"]["split"]["labels_used_in_training"] is False
    assert perceptual["training_config"]["seed"] != classifier["training_config"]["seed"]
    cfg = json.loads((embedded_path("digits", "perceptual") / "config.json").read_text())
    assert cfg["_class_name"] == "FeatureNet"
    assert json.loads((embedded_path("digits", "classifier") / "config.json").read_text())["_class_name"] == "SmallCNN"
    for kind in ("consistency", "consistency-ft"):
        cfg = read_manifest("digits", kind)["training_config"]
        assert cfg["distance"] == "digits-ssl" and "not the certified classifier" in cfg["feature_network"]
        assert cfg["feature_network_fingerprint"].startswith("sha256:")


def test_perceptual_probe_accuracy_reproduces_on_val():
    from benchbench.models.store import load_feature_net
    from benchbench.train.perceptual import probe_accuracy

    train, val = get_dataset("digits", "train"), get_dataset("digits", "val")
    got = probe_accuracy(load_feature_net("digits"), train.images, train.labels, val.images, val.labels)
    claimed = read_manifest("digits", "perceptual")["metrics"]
    assert got["linear_probe_val_accuracy"] == pytest.approx(claimed["linear_probe_val_accuracy"], abs=0.011)
    assert got["linear_probe_val_accuracy"] >= 0.9


def test_digits_ssl_distance_follows_lpips_formula_and_grows_with_noise():
    from benchbench.models.store import load_feature_net
    from benchbench.models.perceptual import get_distance

    d, net = get_distance("digits-ssl"), load_feature_net("digits")
    x = get_dataset("digits", "val").images[:16] * 2 - 1
    y = x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(16)
    with torch.no_grad():
        for fa, fb in zip(net.stages(x), net.stages(y)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            expected += (na - nb).pow(2).sum(1).mean((1, 2))
        torch.testing.assert_close(d(x, y), expected)
        assert torch.equal(d(x, x), torch.zeros(16))
        means = [d(x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), x).mean().item()
                 for s in (0.1, 0.5, 1.0)]
    assert means[0] < means[1] < means[2]


def test_nt_xent_matches_the_formula_and_augment_is_per_sample():
    from benchbench.train.perceptual import PerceptualConfig, augment, nt_xent

    z1, z2 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    t, losses = 0.5, []
    for i in range(6):
        pos = (i + 3) % 6
        others = [j for j in range(6) if j != i]
        logits = torch.tensor([float(z[i] @ z[j]) / t for j in others])
        losses.append(-(float(z[i] @ z[pos]) / t) + torch.logsumexp(logits, 0).item())
    assert nt_xent(z1, z2, t).item() == pytest.approx(np.mean(losses), rel=1e-5)
    x = get_dataset("digits", "train").images[:1].repeat(6, 1, 1, 1) * 2 - 1
    views = augment(x, PerceptualConfig(), torch.Generator().manual_seed(0))
    assert views.shape == x.shape
    assert all(not torch.allclose(views[0], views[j]) for j in range(1, 6))


def test_train_perceptual_and_noise_classifier_commands(tmp_path, capsys):
    from benchbench.models.store import load_feature_net

    assert main(["train", "perceptual", "--steps", "2", "--out", str(tmp_path / "p")]) == 0
    net = load_feature_net(str(tmp_path / "p"))
    assert len(net.stages(torch.zeros(2, 1, 8, 8))) == 4
    assert read_manifest(str(tmp_path / "p"), "perceptual")["training_config"]["seed"] == 7
    assert main(["train", "classifier", "--epochs", "1", "--noise-sd", "0.5", "--out", str(tmp_path / "c")]) == 0
    manifest = read_manifest(str(tmp_path / "c"), "classifier")
    assert manifest["training_config"]["noise_sd"] == 0.5 and "val_accuracy_noise_0.5" in manifest["metrics"]
    capsys.readouterr()
    assert main(["train", "classifier", "--noise-sd", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_shipped_noise_classifiers_reach_their_noisy_val_accuracy():
    val = get_dataset("digits", "val")
    for sigma in (0.25, 0.5, 1.0):
        ref = str(embedded_path("digits", f"classifier-noise-{sigma:g}"))
        manifest = read_manifest(ref, "classifier")
        assert manifest["training_config"]["noise_sd"] == sigma
        noisy = val.images + sigma * torch.randn(val.images.shape, generator=torch.Generator().manual_seed(12345))
        with torch.no_grad():
            acc = (load_classifier(ref)(noisy).argmax(1) == val.labels).float().mean().item()
        assert acc == pytest.approx(manifest["metrics"][f"val_accuracy_noise_{sigma:g}"], abs=1e-6)
    # Trained under noise, it beats the clean classifier on noisy inputs at σ = 0.5.
    noisy = val.images + 0.5 * torch.randn(val.images.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean_acc = (load_classifier("digits")(noisy).argmax(1) == val.labels).float().mean().item()
        noise_acc = (load_classifier(str(embedded_path("digits", "classifier-noise-0.5")))(noisy).argmax(1)
                     == val.labels).float().mean().item()
    assert noise_acc > clean_acc


# --- consistency σ modes ---------------------------------------------------------------------------------

def _cm(folder, **kw):
    from purifiers.consistency import ConsistencyPurifier

    return ConsistencyPurifier(model=str(folder), **kw)


def test_exact_mode_calls_f_at_two_sigma_and_draws_no_noise(tiny_cm_folder):
    unet = UNet2DModel.from_pretrained(tiny_cm_folder, subfolder="unet").eval()
    purifier = _cm(tiny_cm_folder, sigma_mode="exact")
    x_noisy = torch.rand(4, 1, 8, 8) + 0.3 * torch.randn(4, 1, 8, 8)
    assert not purifier.stochastic  # so the harness hands it no per-copy noise at all
    noise = CopyNoise.for_copies(0, 0.3, 0, range(4))
    for sigma in (0.12, 0.3, 0.75):
        expected = (reference_f(unet, 2 * x_noisy - 1, 2 * sigma).clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(purifier(x_noisy, sigma), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(purifier(x_noisy, sigma, noise), expected, atol=1e-5, rtol=1e-5)
        assert purifier.noise_mismatch(sigma) == 0.0
    assert noise.draws == 0  # nothing drawn


@pytest.mark.parametrize("mode, distance", [("nearest", lambda g, s: np.abs(g - 2 * s)),  # Li et al.'s rule
                                            ("nearest-log", lambda g, s: np.abs(np.log(g) - np.log(2 * s)))])
def test_nearest_modes_use_the_grid_level_closest_by_their_rule(tiny_cm_folder, mode, distance):
    unet = UNet2DModel.from_pretrained(tiny_cm_folder, subfolder="unet").eval()
    purifier = _cm(tiny_cm_folder, sigma_mode=mode)
    grid = karras_grid(N)[:-1]
    x_noisy = torch.rand(3, 1, 8, 8)
    for sigma in (0.12, 0.2, 0.3, 0.75):  # at σ = 0.2 the two rules pick different levels of this grid
        level = grid[np.argmin(distance(grid, sigma))]
        expected = (reference_f(unet, 2 * x_noisy - 1, float(level)).clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(purifier(x_noisy, sigma), expected, atol=1e-5, rtol=1e-5)
        assert purifier.noise_mismatch(sigma) == pytest.approx(level / (2 * sigma) - 1)


def test_topup_warns_when_it_inflates_the_noise_and_names_exact(tiny_cm_folder, recwarn):
    grid = karras_grid(N)
    purifier = _cm(tiny_cm_folder, sigma_mode="topup")
    x = torch.rand(2, 1, 8, 8)
    for sigma in (0.12, 0.3, 0.5, 0.75, 1.0):
        above = grid[grid >= 2 * sigma].min()
        inflation = above / (2 * sigma) - 1
        with pytest.warns(UserWarning, match="sigma_mode=exact") if inflation > 0.10 else _no_warning():
            purifier(x, sigma)
            purifier(x, sigma)  # once per σ
    with _no_warning():
        _cm(tiny_cm_folder, sigma_mode="exact")(x, 0.12)


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self._caught if issubclass(w.category, UserWarning)]


def test_default_mode_is_within_15_percent_of_two_sigma_or_warns():
    """The fair-comparison criterion: in the default mode the level the model is given or assumes is within 15% of
    2σ at every σ of the list, or a warning says so (naming the mode that avoids it)."""
    import warnings

    from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE
    from purifiers.consistency import ConsistencyFTPurifier, ConsistencyPurifier

    grid = np.asarray(ConsistencyPurifier().model.sigmas[:-1])
    for cls in (ConsistencyPurifier, ConsistencyFTPurifier):
        purifier = cls()
        assert purifier.sigma_mode == DEFAULT_SIGMA_MODE
        for sigma in (0.12, 0.25, 0.3, 0.5, 0.75, 1.0):
            nearest = grid[np.argmin(np.abs(grid - 2 * sigma))]  # the default: nearest, Li et al.'s rule
            gap = nearest / (2 * sigma) - 1
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                purifier(torch.rand(2, 1, 8, 8), sigma)
            assert abs(gap) <= 0.15 or any("sigma_mode=exact" in str(w.message) for w in caught), sigma
    assert read_manifest("digits", "consistency-ft")["training_config"]["sigma_mode"] == DEFAULT_SIGMA_MODE


def test_finetune_default_is_the_papers_objective_and_the_flag_is_checked(capsys, tmp_path):
    from benchbench.train.finetune import FinetuneConfig

    assert FinetuneConfig().anchor_weight == 0.0
    cfg = read_manifest("digits", "consistency-ft")["training_config"]
    assert cfg["anchor_weight"] == 0.0 and cfg["objective"] == "Li et al. 2024"
    assert main(["train", "finetune", "--anchor-weight", "-2", "--out", str(tmp_path / "ft")]) == 2
    assert "anchor-weight" in capsys.readouterr().err and not (tmp_path / "ft").exists()


def test_evaluate_states_its_criteria_in_help_and_output(capsys):
    from benchbench.train.criteria import CRITERIA

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "val" in text and "FD" in text and "0.9" in text and "1.5" in text
    assert set(CRITERIA) == {"distilled_fd_within_2x_teacher", "finetuned_lpips_10pct_lower_at_every_sigma",
                             "finetuned_fd_within_1.5x_distilled"}


# --- DensePure and the vote ------------------------------------------------------------------------------

def test_ancestral_step_is_diffusers_ddpm_step_with_given_noise():
    from purifiers.diffusion import ancestral_step

    sched = DDPMScheduler(num_train_timesteps=1000)
    timesteps = [600, 413, 207, 0]
    sched.set_timesteps(timesteps=timesteps)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(timesteps):
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i))
        theirs = sched.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ours = ancestral_step(sched.alphas_cumprod, eps, t, prev, x, z)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        x = theirs


def test_majority_vote_ties_go_to_the_lowest_class():
    from benchbench.smoothing.contract import majority_vote

    labels = torch.tensor([3, 1, 3, 2, 2, 7, 4, 1, 1])  # votes of 3 inputs, K = 3
    assert majority_vote(labels, 3, 10).tolist() == [3, 2, 1]
    assert majority_vote(torch.tensor([5, 2, 9, 9, 0, 0]), 2, 10).tolist() == [2, 9, 0]


def test_densepure_samples_depend_on_the_copy_alone(tiny_ddpm):
    from benchbench.smoothing.nfe import ForwardCounter
    from benchbench.registry import get_purifier
    from benchbench.results.quality import purify_copies

    p = get_purifier("densepure", k=3, steps=4, model=str(tiny_ddpm))
    assert p.stochastic and p.votes == 3
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with ForwardCounter(p.networks) as counter:
        whole = purify_copies(p, "densepure", x, 0.5, seed=1, idx=7)
    assert whole.shape == (12, 1, 8, 8) and counter.rows == 4 * 3 * 4  # K·steps calls per copy
    halves = torch.cat([purify_copies(p, "densepure", x[:2], 0.5, seed=1, idx=7),
                        purify_copies(p, "densepure", x[2:], 0.5, seed=1, idx=7, first_copy=2)])
    torch.testing.assert_close(whole, halves)
    assert not torch.allclose(whole[0], whole[1])  # the K samples of one copy differ
    assert not torch.allclose(whole, purify_copies(p, "densepure", x, 0.5, seed=2, idx=7))


def test_cohen_and_densepure_rows_in_a_run(tmp_path, tiny_ddpm, capsys):
    out = tmp_path / "run"
    argv = ["run", "--purifiers", f"cohen,densepure:k=3:steps=2:model={tiny_ddpm}", "--sigmas", "0.25,0.5",
            "--n0", "4", "--n", "8", "--num-images", "2", "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["perceptual_distance"]["distance"] == "digits-ssl"
    assert "not the certified classifier" in config["environment"]["perceptual_distance"]["feature_network"]
    exp = config["experiment"]
    cohen = next(p for p in exp["purifiers"] if p["name"] == "cohen")
    assert cohen["classifiers"]["0.5"]["ref"].endswith("classifier-noise-0.5")
    assert cohen["classifiers"]["0.25"]["fingerprint"].startswith("sha256:")
    entry = next(f for f in config["files"] if f["purifier"].startswith("densepure") and f["sigma"] == 0.5)
    nfe = [float(line.split("\t")[7]) for line in (out / entry["file"]).read_text().splitlines()[1:]]
    assert nfe == [6.0, 6.0]  # K·steps network calls per noisy sample
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["run", "--purifiers", "cohen", "--sigmas", "0.3", "--n0", "4", "--n", "8", "--num-images", "1",
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--noise-sd 0.3" in err and not bad.exists()


# --- presets and the figure ------------------------------------------------------------------------------

def test_presets_name_their_sources():
    from benchbench.run.presets import DESCRIPTIONS, PRESETS

    assert PRESETS["paper"]["n"] == 10_000 and "Li et al." in DESCRIPTIONS["paper"]
    assert PRESETS["cohen"]["n"] == 100_000 and "Cohen et al." in DESCRIPTIONS["cohen"]
    assert set(DESCRIPTIONS) == set(PRESETS)


def test_pareto_figure_has_a_seconds_and_an_nfe_panel(tmp_path):
    from synthetic_run import standard_run

    run = standard_run(tmp_path / "run")
    assert main(["plot", "pareto", str(run), "--out", str(tmp_path / "p.png")]) == 0
    svg = (tmp_path / "p.svg").read_text()
    assert "NFE per noisy sample" in svg and "certification time" in svg
