"""Purification quality: MSE, a plugged-in distance and label preservation, on the runner's noise."""

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench.smoothing.certify import noisy_batches
from benchbench.errors import InvalidArgument
from benchbench.results.quality import measure_quality, write_quality
from benchbench.smoothing.noise import noise_generator
from torchmetrics.functional.image import structural_similarity_index_measure
from synthetic_run import random_rows, write_run


class Identity:
    networks = ()
    output_range = None  # noisy images leave [0, 1]

    def __call__(self, x, sigma):
        return x


class Grey:
    """Returns mid-grey whatever it gets."""

    networks = ()

    def __call__(self, x, sigma):
        return torch.full_like(x, 0.5)


class Brightness(torch.nn.Module):
    """A stand-in classifier: class 1 when the mean pixel is above 0.3, else class 0."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bright = (x.flatten(1).mean(1) > 0.3).long()
        return torch.nn.functional.one_hot(bright, 2).float()


def first_draws(x, sigma, seed, idx, n0, copies):
    """The first noisy copies certification draws: its first noisy_batches call, n0 selection samples."""
    batch = next(noisy_batches(x, n0, sigma=sigma, batch_size=n0, generator=noise_generator(seed, idx, sigma)))
    return batch[:copies]


def test_quality_numbers_on_the_certification_noise():
    torch.manual_seed(0)
    images = torch.rand(6, 1, 3, 3) * 0.6  # 9 values: torch draws these differently by count
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    indices, sigmas, seed, copies, n0 = [1, 3, 4], [0.25, 0.5], 7, 5, 12

    def maxabs(a, b):
        return (a - b).abs().flatten(1).max(1).values

    got = measure_quality({"id": Identity(), "grey": Grey()}, Brightness(), images, labels, indices, sigmas,
                          seed=seed, copies=copies, distance=maxabs, n0=n0)
    assert list(zip(got["purifier"], got["sigma"])) == [("id", 0.25), ("id", 0.5), ("grey", 0.25), ("grey", 0.5)]
    for _, row in got.iterrows():
        mse, dist, kept, peak, similarity = [], [], [], [], []
        for idx in indices:
            x = images[idx]
            noisy = first_draws(x, row["sigma"], seed, idx, n0, copies)
            out = noisy if row["purifier"] == "id" else torch.full_like(noisy, 0.5)
            similarity += structural_similarity_index_measure(out, x.expand_as(out).contiguous(), data_range=1.0,
                                                              gaussian_kernel=False, kernel_size=3,
                                                              reduction="none").tolist()
            for c in range(copies):
                mse.append(((out[c] - x) ** 2).mean().item())
                peak.append(10 * np.log10(1 / ((out[c] - x) ** 2).mean().item()))
                dist.append((out[c] - x).abs().max().item())
                kept.append(float(int(out[c].mean() > 0.3) == int(labels[idx])))
        assert row["mse"] == pytest.approx(np.mean(mse), rel=1e-5)
        assert row["distance"] == pytest.approx(np.mean(dist), rel=1e-5)
        assert row["label_kept"] == pytest.approx(np.mean(kept))
        assert row["psnr"] == pytest.approx(np.mean(peak), rel=1e-4)
        assert row["ssim"] == pytest.approx(np.mean(similarity), rel=1e-4)
        assert (row["images"], row["copies"]) == (3, copies)
    # Less noise, less distance by every measure; grey is far from every image.
    ident = got[got["purifier"] == "id"].set_index("sigma")
    assert ident.loc[0.25, "ssim"] > ident.loc[0.5, "ssim"] and ident.loc[0.25, "psnr"] > ident.loc[0.5, "psnr"]


def test_quality_without_distance_has_no_distance_column():
    images = torch.rand(2, 1, 8, 8)
    got = measure_quality({"id": Identity()}, Brightness(), images, torch.tensor([0, 1]), [0, 1], [0.5], seed=0)
    assert "distance" not in got.columns and got.loc[0, "copies"] == 8
    with pytest.raises(InvalidArgument):
        measure_quality({"id": Identity()}, Brightness(), images, torch.tensor([0, 1]), [0], [0.5], seed=0, copies=0)


def test_write_quality_uses_the_runs_purifiers_images_and_classifier(tmp_path):
    rng = np.random.RandomState(0)
    cells = {("identity", 0.5): random_rows(rng, 0.5, [0, 10], 0.01, 0.0, 0.5)}
    run = write_run(tmp_path / "run", [{"label": "identity", "name": "identity", "params": {}}], cells)
    assert list(write_quality(run, copies=2, distance=None).columns) == [
        "purifier", "sigma", "images", "copies", "mse", "ssim", "psnr", "label_kept"]
    table = write_quality(run, copies=2)  # default: the dataset's LPIPS-style distance, named in the table
    saved = pd.read_csv(run / "quality.csv")
    assert list(saved.columns) == ["purifier", "sigma", "images", "copies", "mse", "distance", "ssim", "psnr",
                                   "label_kept", "distance_name"]
    # Identity leaves the noise: PSNR of σ = 0.5 noise is about 10·log10(1/σ²) = 6 dB, SSIM well below 1.
    assert 4.5 < saved.loc[0, "psnr"] < 8 and 0 < saved.loc[0, "ssim"] < 0.5
    assert saved.loc[0, "distance_name"] == "digits-ssl" and saved.loc[0, "distance"] > 0
    assert saved.loc[0, "images"] == 2 and saved.loc[0, "copies"] == 2
    # Identity: the error is the noise itself, σ² per pixel in expectation (2 images × 2 copies × 64 pixels).
    assert 0.15 < saved.loc[0, "mse"] < 0.35
    assert table.loc[0, "mse"] == pytest.approx(saved.loc[0, "mse"])
