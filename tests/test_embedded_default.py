"""The embedded default: digits data and the shipped models, checked against what their manifests claim
(RobustBench-style: a shipped model must still reach its published numbers)."""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from benchbench.data.dataset import get_dataset
from benchbench.models.classifiers import load_classifier
from benchbench.models.store import embedded_path, read_manifest


def test_digits_split_is_fixed_disjoint_and_in_range():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(get_dataset("digits", "val")), len(test)) == (1147, 200, 450)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.float32
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    # The split is the documented permutation of scikit-learn's 1,797 digits.
    raw = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    np.testing.assert_array_equal(test.labels.numpy(), raw.target[order[1347:]])
    np.testing.assert_allclose(test.images[:, 0].numpy(), raw.images[order[1347:]] / 16.0)
    assert len(set(order[:1347]) & set(order[1347:])) == 0
    assert torch.equal(get_dataset("digits", "test").images, test.images)


def test_shipped_classifier_reaches_its_manifest_accuracy():
    manifest = read_manifest("digits", "classifier")
    assert manifest["training_config"]["seed"] == 0 and manifest["training_config"]["noise_sd"] == 0.0
    assert manifest["training_config"]["split"] == {"dataset": "digits", "train": 1147, "val": 200,
                                                    "metrics_on": "val"}
    model = load_classifier("digits")
    val = get_dataset("digits", "val")
    with torch.no_grad():
        acc = (model(val.images).argmax(1) == val.labels).float().mean().item()
    assert acc >= 0.95
    assert acc == pytest.approx(manifest["metrics"]["val_accuracy"], abs=1e-6)  # float32 mean vs exact ratio


def test_shipped_ddpm_loads_with_diffusers_own_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    path = embedded_path("digits", "ddpm")
    pipe = DDPMPipeline.from_pretrained(path)
    assert isinstance(pipe.unet, UNet2DModel) and isinstance(pipe.scheduler, DDPMScheduler)
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 1
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["training_config"]["data_range"] == [-1, 1]
    # The ε-prediction error it claims on the val split is what it still reaches (same evaluation seed).
    from benchbench.train.ddpm import eps_mse

    claimed = manifest["metrics"]["val_eps_mse_by_t"]
    val = get_dataset("digits", "val").images * 2 - 1
    got = eps_mse(pipe.unet, pipe.scheduler, val, [int(t) for t in claimed], torch.Generator().manual_seed(12345))
    for t, value in claimed.items():
        assert got[t] == pytest.approx(value, rel=1e-3)
    # And it denoises: far better than predicting zero noise (whose error would be 1).
    assert claimed["200"] < 0.2


def test_train_commands_write_loadable_models_with_manifests(tmp_path, capsys):
    """`bench train classifier|ddpm` on a few steps: the folders load through the one loader and diffusers."""
    from diffusers import DDPMPipeline

    from benchbench.cli import main
    from benchbench.models.store import load_ddpm

    assert main(["train", "classifier", "--epochs", "1", "--out", str(tmp_path / "clf")]) == 0
    assert main(["train", "ddpm", "--steps", "3", "--out", str(tmp_path / "ddpm")]) == 0
    clf = load_classifier(str(tmp_path / "clf"))
    assert clf(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    manifest = read_manifest(str(tmp_path / "clf"), "classifier")
    assert manifest["training_config"]["epochs"] == 1 and 0.0 <= manifest["metrics"]["val_accuracy"] <= 1.0
    unet, scheduler = load_ddpm(str(tmp_path / "ddpm"))
    assert isinstance(DDPMPipeline.from_pretrained(tmp_path / "ddpm").unet, type(unet))
    ddpm_manifest = read_manifest(str(tmp_path / "ddpm"), "ddpm")
    assert ddpm_manifest["training_config"]["steps"] == 3
    assert set(ddpm_manifest["metrics"]["val_eps_mse_by_t"]) == {"10", "50", "100", "200", "400", "700"}
