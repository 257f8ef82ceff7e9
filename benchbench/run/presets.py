"""Named certification protocols. Flags given to `bench run` override a preset's values.

A preset is one set of defaults plus, under ``by_dataset``, what changes on a given dataset, so one name
(``paper``) runs each dataset's published protocol: :func:`preset_values` resolves it for a dataset. Each
preset has a description naming where its numbers come from (`bench run --help` lists them).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=16, n=128, alpha=0.001,
                  num_images=30, skip=None, batch_size=512, seed=0),
    # Consistency Purification (Li et al. 2024), after Cohen et al. / Carlini et al.: 500 test images at a
    # fixed stride (every 20th of CIFAR-10's 10,000, every 100th of ImageNet-64's 50,000; the whole test set
    # when it has fewer, as digits' 450), n0 = 100, n = 10,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0}; on
    # ImageNet-64, σ ∈ {0.05, 0.15, 0.25}.
    "paper": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0,
                  by_dataset={"imagenet64": dict(sigmas=(0.05, 0.15, 0.25))}),
    # Cohen et al. 2019 and Carlini et al. 2023 (DDS): the same images, n = 100,000.
    "cohen": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=100_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0,
                  by_dataset={"imagenet64": dict(sigmas=(0.05, 0.15, 0.25))}),
    "reference": dict(dataset="digits", sigmas=(0.25, 0.5), n0=100, n=10_000, alpha=0.001,
                      num_images=450, skip=None, batch_size=1000, seed=0),
}

DESCRIPTIONS: dict[str, str] = {
    "quick": "about 12 minutes on 2 idle CPU cores for every built-in purifier: for trying things, not for citing "
             "(30 images, n0 = 16, n = 128, α = 0.001; the radius cap is 1.62·σ)",
    "paper": "Li et al. 2024 (Consistency Purification): 500 test images at a fixed stride (all 450 on "
             "digits, every 20th on CIFAR-10, every 100th on ImageNet-64), n0 = 100, n = 10,000, α = 0.001, "
             "σ ∈ {0.25, 0.5, 1.0} (ImageNet-64: {0.05, 0.15, 0.25})",
    "cohen": "Cohen et al. 2019 and Carlini et al. 2023 (DDS): 500 test images at a fixed stride (all 450 on "
             "digits), n0 = 100, n = 100,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0} (ImageNet-64: {0.05, 0.15, 0.25})",
    "reference": "benchbench's digits reference run: all 450 test digits, σ ∈ {0.25, 0.5}, n0 = 100, "
                 "n = 10,000, α = 0.001 (radius cap 3.2·σ: 0.80 at σ = 0.25, 1.60 at σ = 0.5)",
}


def preset_values(name: str, dataset: str | None = None) -> dict[str, Any]:
    """Preset ``name``'s values for ``dataset`` (default: the preset's own dataset), ``by_dataset``
    overrides applied (keyed by the dataset's name before any ``:`` argument)."""
    values = dict(PRESETS[name])
    overrides = values.pop("by_dataset", {})
    if dataset is not None:
        values["dataset"] = dataset
    values.update(overrides.get(values["dataset"].partition(":")[0], {}))
    return values
