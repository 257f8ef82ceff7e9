"""The published protocols benchbench names: Li et al.'s nearest-level rule and the presets named for their
sources."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchbench.errors import InvalidArgument


def _karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """Karras et al.'s grid written out from the formula (descending), independent of diffusers."""
    i = np.arange(n) / (n - 1)
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_nearest_is_li_et_al_rule_and_nearest_log_the_ratio_rule_on_the_imagenet_grid():
    from benchbench.models.consistency import assumed_level, first_call, make_scheduler
    from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE

    grid = _karras(40)[:-1]  # σ_min is never chosen: f is the identity there
    sigma = 0.15
    li = grid[np.argmin(np.abs(grid - 2 * sigma))]
    log = grid[np.argmin(np.abs(np.log(grid) - math.log(2 * sigma)))]
    assert li == pytest.approx(0.2556, abs=1e-4) and log == pytest.approx(0.3489, abs=1e-4)  # the figures

    sigmas = make_scheduler(40, sigma_max=80.0).sigmas.double()
    assert DEFAULT_SIGMA_MODE == "nearest"
    assert assumed_level(sigmas, sigma, "nearest") == pytest.approx(li, rel=1e-9)
    assert assumed_level(sigmas, sigma, "nearest-log") == pytest.approx(log, rel=1e-9)
    # The purifier's first network call uses the same level, with the input untouched (no noise added).
    model = SimpleNamespace(sigmas=sigmas)
    x = torch.rand(2, 3, 4, 4)
    for mode, level in (("nearest", li), ("nearest-log", log)):
        x_in, got, k = first_call(model, x, sigma, mode)
        assert got == pytest.approx(level, rel=1e-9) and float(sigmas[k]) == got
        torch.testing.assert_close(x_in, 2 * x - 1)


def test_nearest_rules_agree_wherever_no_midpoint_lies_between_them_and_unknown_modes_are_refused():
    from benchbench.models.consistency import assumed_level, make_scheduler
    from benchbench.models.sigma_modes import check_sigma_mode

    sigmas = make_scheduler(40, sigma_max=80.0).sigmas.double()
    grid = _karras(40)[:-1]
    for sigma in np.linspace(0.01, 5, 200):
        lo, hi = grid[grid <= 2 * sigma].max(initial=0.0), grid[grid >= 2 * sigma].min()
        arith, geo = (lo + hi) / 2, math.sqrt(lo * hi) if lo > 0 else 0.0
        differ = geo < 2 * sigma < arith  # between the two midpoints the rules pick different neighbours
        same = assumed_level(sigmas, sigma, "nearest") == assumed_level(sigmas, sigma, "nearest-log")
        assert same != differ, sigma
    with pytest.raises(InvalidArgument, match="nearest-log"):
        check_sigma_mode("closest")


def _run_config(preset: str, dataset: str):
    from benchbench.registry import parse_purifier_list
    from benchbench.run.presets import preset_values
    from benchbench.run.runner import RunConfig

    return RunConfig(purifiers=parse_purifier_list("identity"), **preset_values(preset, dataset))


# What each source's README (and the code it runs) does, written out here from the sources: the images are
# those its certify.py loop keeps (`if i % skip != 0: continue` over the whole test set).
SOURCES = {
    # ethz-spylab/diffusion_denoised_smoothing README "Evaluation"; imagenet/certify.py's transform
    ("dds", "cifar10"): dict(size=10_000, skip=1, n0=100, n=100_000, alpha=0.001, sigmas=(0.25, 0.5, 1.0),
                             dataset="cifar10"),
    ("dds", "imagenet"): dict(size=50_000, skip=50, n0=100, n=10_000, alpha=0.001, sigmas=(0.25, 0.5, 1.0),
                              dataset="imagenet:size=224:resize=256"),
    # locuslab/smoothing README "Scripts" and experiments.MD; code/datasets.py's transform
    ("cohen", "cifar10"): dict(size=10_000, skip=20, n0=100, n=100_000, alpha=0.001,
                               sigmas=(0.12, 0.25, 0.5, 1.0), dataset="cifar10"),
    ("cohen", "imagenet"): dict(size=50_000, skip=100, n0=100, n=100_000, alpha=0.001, sigmas=(0.25, 0.5, 1.0),
                                dataset="imagenet:size=224:resize=256"),
    # Li et al. 2024, §5: 500 test images, every 20th of CIFAR-10 (the 1st, 21st, 41st, ...)
    ("paper", "cifar10"): dict(size=10_000, skip=20, n0=100, n=10_000, alpha=0.001, sigmas=(0.25, 0.5, 1.0),
                               dataset="cifar10"),
}


@pytest.mark.parametrize("preset, dataset", sorted(SOURCES))
def test_presets_certify_the_images_and_protocol_of_their_source(preset, dataset):
    source = SOURCES[(preset, dataset)]
    config = _run_config(preset, dataset)
    assert config.image_indices(source["size"]) == [i for i in range(source["size"]) if i % source["skip"] == 0]
    assert (config.n0, config.n, config.alpha, config.sigmas) == tuple(source[k] for k in ("n0", "n", "alpha",
                                                                                          "sigmas"))
    assert config.dataset == source["dataset"]


def test_a_preset_keeps_dataset_options_given_on_the_command_line_and_names_its_sources():
    from benchbench.run.presets import DESCRIPTIONS, PRESETS

    assert _run_config("dds", "imagenet:size=256").dataset == "imagenet:size=256"
    assert _run_config("dds", "digits").image_indices(450) == list(range(450))
    assert _run_config("cohen", "digits").image_indices(450) == list(range(450))
    assert "same images as" not in " ".join(DESCRIPTIONS.values())
    for name, source in (("dds", "diffusion_denoised_smoothing README"), ("cohen", "locuslab/smoothing README"),
                         ("paper", "Li et al. 2024")):
        assert source in DESCRIPTIONS[name]
    assert set(DESCRIPTIONS) == set(PRESETS)


def test_the_dds_preset_runs_every_image_its_stride_gives(tmp_path):
    """DDS's protocol names a stride, not an image count: `bench run --preset dds` certifies every test image
    at skip 1 (all 450 digits) instead of refusing a count the test set cannot fill."""
    import pandas as pd

    from benchbench.cli import main

    out = tmp_path / "dds"
    assert main(["run", "--preset", "dds", "--purifiers", "identity", "--sigmas", "0.5", "--n0", "2", "--n", "4",
                 "--no-report", "--out", str(out)]) == 0
    rows = pd.read_csv(next(out.glob("certify_*.tsv")), sep="\t")
    assert rows["idx"].tolist() == list(range(450))
