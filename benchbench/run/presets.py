"""Named certification protocols. Flags given to `bench run` override a preset's values.

A preset is one set of defaults plus, under ``by_dataset``, what changes on a given dataset, so one name
(``dds``) runs each dataset's published protocol: :func:`preset_values` resolves it for a dataset. A
``dataset_options`` entry there (``size=224:resize=256``) is the source's preprocessing, appended to a
dataset named without options (``--dataset imagenet``); options given on the command line win. Each
preset has a description naming the file or section each number comes from (`bench run --help` lists
them, and the README's preset table repeats them).
"""

from __future__ import annotations

from typing import Any

# torchvision's Resize(256) + CenterCrop(224): the ImageNet test set of locuslab/smoothing's
# code/datasets.py (`_imagenet`) and of DDS's imagenet/certify.py.
IMAGENET_224 = "size=224:resize=256"

PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=16, n=128, alpha=0.001,
                  num_images=30, skip=None, batch_size=512, seed=0),
    # Consistency Purification (Li et al. 2024), §5 "Experimental settings": 500 test images at a fixed
    # stride (every 20th of CIFAR-10's 10,000, every 100th of ImageNet-64's 50,000; the whole test set when
    # it has fewer, as digits' 450), n0 = 100, n = 10,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0}; on ImageNet-64,
    # σ ∈ {0.05, 0.15, 0.25}.
    "paper": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0,
                  by_dataset={"imagenet64": dict(sigmas=(0.05, 0.15, 0.25))}),
    # Cohen et al. 2019, locuslab/smoothing: README "Scripts" and experiments.MD (certify.py --N0 100
    # --N 100000 --alpha 0.001; CIFAR-10 --skip 20 at σ = 0.12, 0.25, 0.5, 1.0; ImageNet --skip 100 at
    # σ = 0.25, 0.5, 1.0); ImageNet images as code/datasets.py crops them.
    # 500 images at a stride is every 20th of CIFAR-10's 10,000 and every 100th of ImageNet's 50,000.
    "cohen": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=100_000, alpha=0.001,
                  num_images=500, skip=None, batch_size=1000, seed=0,
                  by_dataset={"cifar10": dict(sigmas=(0.12, 0.25, 0.5, 1.0)),
                              "imagenet": dict(dataset_options=IMAGENET_224)}),
    # Carlini et al. 2023 (DDS), ethz-spylab/diffusion_denoised_smoothing: README "Evaluation" (CIFAR-10
    # --skip 1 --N0 100 --N 100000; ImageNet --skip 50 --N0 100 --N 10000), α = 0.001 (certify.py's default),
    # σ = 0.25, 0.5, 1.0 (the paper's tables; the README's commands show --sigma 1.00); ImageNet images as
    # imagenet/certify.py crops them.
    "dds": dict(dataset="digits", sigmas=(0.25, 0.5, 1.0), n0=100, n=100_000, alpha=0.001,
                # num_images None: the stride alone chooses the images, as in DDS's certify.py loops
                # (`if i % skip != 0: continue`), over the whole test set
                num_images=None, skip=1, batch_size=1000, seed=0,
                by_dataset={"imagenet": dict(skip=50, n=10_000, dataset_options=IMAGENET_224)}),
    "reference": dict(dataset="digits", sigmas=(0.25, 0.5), n0=100, n=10_000, alpha=0.001,
                      num_images=450, skip=None, batch_size=1000, seed=0),
}

DESCRIPTIONS: dict[str, str] = {
    "quick": "about 4 minutes on 2 idle CPU cores for every built-in purifier: for trying things, not for citing "
             "(30 images, n0 = 16, n = 128, α = 0.001; the radius cap is 1.62·σ)",
    "paper": "Li et al. 2024 (Consistency Purification, §5 Experimental settings): 500 test images at a fixed "
             "stride (all 450 on digits, every 20th on CIFAR-10, every 100th on ImageNet-64), n0 = 100, "
             "n = 10,000, α = 0.001, σ ∈ {0.25, 0.5, 1.0} (ImageNet-64: {0.05, 0.15, 0.25})",
    "cohen": "Cohen et al. 2019 (locuslab/smoothing README 'Scripts', experiments.MD): n0 = 100, n = 100,000, "
             "α = 0.001, 500 test images at a fixed stride (all 450 on digits); CIFAR-10: every 20th, "
             "σ ∈ {0.12, 0.25, 0.5, 1.0}; ImageNet: every 100th, σ ∈ {0.25, 0.5, 1.0}, shorter side 256 then "
             "centre 224 (code/datasets.py): imagenet:size=224:resize=256",
    "dds": "Carlini et al. 2023, DDS (ethz-spylab/diffusion_denoised_smoothing README 'Evaluation'): n0 = 100, "
           "α = 0.001 (certify.py default), σ ∈ {0.25, 0.5, 1.0} (paper; the README shows 1.00); every test "
           "image (skip 1), n = 100,000; ImageNet: every 50th, n = 10,000, shorter side 256 then centre 224 "
           "(imagenet/certify.py): imagenet:size=224:resize=256",
    "reference": "benchbench's digits reference run: all 450 test digits, σ ∈ {0.25, 0.5}, n0 = 100, "
                 "n = 10,000, α = 0.001 (radius cap 3.2·σ: 0.80 at σ = 0.25, 1.60 at σ = 0.5)",
}


def preset_values(name: str, dataset: str | None = None) -> dict[str, Any]:
    """Preset ``name``'s values for ``dataset`` (default: the preset's own dataset), ``by_dataset``
    overrides applied (keyed by the dataset's name before any ``:`` argument). A ``dataset_options``
    override is appended to a dataset given without options (``imagenet`` → ``imagenet:size=224:...``)."""
    values = dict(PRESETS[name])
    overrides = values.pop("by_dataset", {})
    if dataset is not None:
        values["dataset"] = dataset
    extra = dict(overrides.get(values["dataset"].partition(":")[0], {}))
    options = extra.pop("dataset_options", None)
    if options and ":" not in values["dataset"]:
        values["dataset"] = f"{values['dataset']}:{options}"
    values.update(extra)
    return values
