"""Purification quality: how close each purifier's output is to the clean image, and whether the classifier
still sees the right digit in it.

For each purifier configuration, σ and run image, the purifier gets the first ``copies`` noisy copies of
the certification noise (the generator for (seed, image, σ), so the same draws every purifier and the
certificates saw; a stochastic purifier gets each copy's own noise, so its outputs are the certified ones) and the result is compared with the clean image:

* ``mse``: mean squared error per pixel in [0, 1] image scale, averaged over copies and images;
* ``distance``: the mean of a caller-supplied ``distance(a, b) -> per-image tensor`` (e.g. an LPIPS-style
  metric), absent when none is given. The run's default is the dataset's LPIPS-style distance, which on
  digits is ``digits-ssl``, the very loss ``consistency-ft`` was fine-tuned on: it favours that model;
* ``ssim`` and ``psnr``: SSIM (Wang et al. 2004, torchmetrics, data range 1) and PSNR in dB, per copy and
  then averaged, distances no purifier was trained or selected on;
* ``label_kept``: the fraction of purified copies the classifier labels with the true label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import pandas as pd
import torch

from benchbench.smoothing.certify import certification_batches, noisy_batches
from benchbench.errors import BenchError, InvalidArgument, PluginFault, first_line
from benchbench.registry import Purifier, get_purifier
from benchbench.results.report import QUALITY_FILE
from benchbench.results.rundir import read_config, write_atomic
from benchbench.smoothing.noise import CopyNoise, noise_generator
from benchbench.smoothing.contract import OutputError, checked_purify, majority_vote

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance(a, b)``: two batches (B, C, H, W) in [0, 1] → per-image distances, shape (B,)."""

DEFAULT_COPIES = 8
DEFAULT_BATCH = 1000
# A copy purified to exactly the clean image has infinite PSNR, which would make the mean infinite.
PSNR_CAP_DB = 100.0


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of two batches (B, C, H, W) in [0, 1]: torchmetrics' defaults, Wang et al.'s Gaussian
    window (σ = 1.5, 11 taps, reflect-padded, so images of 6 pixels a side or more); a smaller image gets
    the uniform window of the largest odd size that fits."""
    # imported here, not at the top: every `bench run` imports this module, and torchmetrics takes seconds
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(a.shape[-2:])
    kw = {} if side > 5 else {"gaussian_kernel": False, "kernel_size": side if side % 2 else side - 1}
    return structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, reduction="none", **kw)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches (B, C, H, W) in [0, 1] (data range 1), capped at 100 dB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # see ssim()

    value = peak_signal_noise_ratio(a.float(), b.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return value.clamp(max=PSNR_CAP_DB)


def noisy_copies(x: torch.Tensor, sigma: float, *, seed: int, idx: int, copies: int,
                 n0: int | None = None, n: int | None = None, noise_device: str = "cpu") -> torch.Tensor:
    """The first ``copies`` noisy copies of image ``idx`` that certification drew at σ: (copies, *x.shape).

    Given the run's ``n0`` and ``n`` (copies ≤ n0 + n) they are exactly certification's draws, whatever the
    image size (certification draws fixed blocks, selection then estimation). Without them ``copies`` are
    drawn as one stream, which gives the same values whenever copies ≤ 64 on the CPU (the first rows of a
    CPU draw do not depend on how many are drawn). ``noise_device``: where the run drew it.
    """
    gen = noise_generator(seed, idx, sigma, device=noise_device)
    if n0 is None:
        return next(noisy_batches(x, copies, sigma=sigma, batch_size=copies, generator=gen))
    total = n0 + (n if n is not None else copies)
    if not 1 <= copies <= total:
        raise InvalidArgument(f"copies must lie between 1 and n0 + n = {total}, got {copies}")
    out, have = [], 0
    for batch in certification_batches(x, sigma=sigma, n0=n0, n=total - n0, batch_size=copies, generator=gen):
        out.append(batch[: copies - have])
        have += len(out[-1])
        if have == copies:
            break
    return torch.cat(out)


def purify_copies(purifier: Purifier, label: str, noisy: torch.Tensor, sigma: float, *, seed: int, idx: int,
                  first_copy: int = 0, noise_device: str = "cpu") -> torch.Tensor:
    """``purifier``'s checked output for noisy copies ``first_copy`` … of image ``idx`` — the very output
    certification classified for those copies (a stochastic purifier gets the copies' own noise, drawn on
    the run's ``noise_device``)."""
    noise = CopyNoise.for_copies(seed, sigma, idx, range(first_copy, first_copy + len(noisy)), noise_device) \
        if getattr(purifier, "stochastic", False) else None
    where = f"purifier {label!r} at σ={sigma:g}, image {idx}"
    try:
        return checked_purify(purifier, noisy, sigma, noise)
    except OutputError as exc:
        raise PluginFault(f"{where}: {exc.reason}") from None
    except BenchError:
        raise
    except Exception as exc:  # a plugin's bug: one line naming it
        first = first_line(exc, "(no message)")
        raise PluginFault(f"{where} raised {type(exc).__name__}: {first}") from exc


@torch.no_grad()
def measure_quality(purifiers: Mapping[str, Purifier], classifier: torch.nn.Module, images: torch.Tensor,
                    labels: torch.Tensor, indices: Sequence[int], sigmas: Sequence[float], *, seed: int,
                    copies: int = DEFAULT_COPIES, distance: Distance | None = None,
                    n0: int | None = None, n: int | None = None, batch_size: int = DEFAULT_BATCH,
                    noise_device: str = "cpu") -> pd.DataFrame:
    """One row per (purifier label, σ), purifiers in mapping order and σ as given: ``purifier sigma images
    copies mse [distance] ssim psnr label_kept`` (see the module docstring). ``images[idx]`` is a clean image in [0, 1], ``labels[idx]`` its
    class; ``distance`` gets the purified copies and the clean image repeated, both in [0, 1] image scale
    (wrap a distance that wants [-1, 1]); ``n0``/``n`` are the run's (see :func:`noisy_copies`). Copies go
    through the networks ``batch_size`` at a time, so memory stays bounded. The computation runs on the
    classifier's device; a purifier output that breaks the contract raises PluginFault."""
    if copies < 1:
        raise InvalidArgument(f"copies must be >= 1, got {copies}")
    if not indices:
        raise InvalidArgument("no image to measure quality on")
    device = next(classifier.parameters()).device
    out = []
    for label, purifier in purifiers.items():
        for sigma in sigmas:
            clf = classifier
            if hasattr(purifier, "classifier_for"):  # the Cohen et al. baseline: its noise-trained classifier
                from benchbench.models.classifiers import load_classifier

                clf = load_classifier(purifier.classifier_for(sigma), device)
            mse, dist, similarity, peak, kept = [], [], [], [], []
            for idx in indices:
                x = images[idx].to(device)
                noisy = noisy_copies(x, sigma, seed=seed, idx=idx, copies=copies, n0=n0, n=n,
                                     noise_device=noise_device)
                for start in range(0, copies, batch_size):
                    purified = purify_copies(purifier, label, noisy[start:start + batch_size], sigma, seed=seed,
                                             idx=idx, first_copy=start, noise_device=noise_device)
                    votes = getattr(purifier, "votes", 1)
                    clean = x.unsqueeze(0).expand_as(purified)
                    mse.append(((purified - clean) ** 2).flatten(1).mean(1))
                    similarity.append(ssim(purified, clean.contiguous()))
                    peak.append(psnr(purified, clean))
                    if distance is not None:
                        dist.append(torch.as_tensor(distance(purified, clean)).reshape(-1).float())
                    logits = clf(purified)
                    voted = majority_vote(logits.argmax(1), votes, logits.shape[1])  # the label certification counts
                    kept.append((voted == int(labels[idx])).float())
            rec = {"purifier": label, "sigma": float(sigma), "images": len(indices), "copies": copies,
                   "mse": torch.cat(mse).mean().item()}
            if distance is not None:
                rec["distance"] = torch.cat(dist).mean().item()
            rec["ssim"] = torch.cat(similarity).mean().item()
            rec["psnr"] = torch.cat(peak).mean().item()
            rec["label_kept"] = torch.cat(kept).mean().item()
            out.append(rec)
    return pd.DataFrame(out)


def perceptual_distance(name: str, dataset: str, device: str = "cpu") -> Distance:
    """The LPIPS-style distance ``name`` (``lpips`` = the dataset's default, see :mod:`benchbench.models.perceptual`)
    taking images in [0, 1], as :func:`measure_quality` wants; raises CheckpointError when its backbone
    weights are missing."""
    from benchbench.models.perceptual import get_distance, resolve_distance

    d = get_distance(resolve_distance(name, dataset), device)
    return lambda a, b: d(2 * a - 1, 2 * b - 1)


def write_quality(run_dir: Path | str, *, distance: Distance | str | None = "lpips", copies: int = DEFAULT_COPIES,
                  device: str = "cpu", only: Collection[str] | None = None) -> pd.DataFrame:
    """Measure the quality of every purifier configuration of a run, at its σs and on its images, with the
    run's classifier and seed; write ``quality.csv`` into the run directory and return it. ``distance`` is a
    callable, a distance name for :func:`perceptual_distance` (recorded in a ``distance_name`` column), or
    None to skip it. ``only``: the purifier labels to measure (default: all of the run's)."""
    from benchbench.data.dataset import get_dataset
    from benchbench.models.classifiers import load_classifier

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    exp = config["experiment"]
    limit = exp["n0"] + exp["n"]
    if not 1 <= copies <= limit:
        raise InvalidArgument(f"copies must lie between 1 and the run's n0 + n = {limit} (the noisy copies "
                              f"certification drew), got {copies}")
    test = get_dataset(exp["dataset"], "test", data_dir=config.get("environment", {}).get("data_dir"))
    classifier = load_classifier(exp["classifier"]["ref"], device, exp["dataset"])
    try:
        purifiers = {p["label"]: get_purifier(p["name"], **p["params"], device=device, dataset=exp["dataset"],
                                              classifier=classifier)
                     for p in exp["purifiers"] if only is None or p["label"] in only}
    except BenchError as exc:
        raise BenchError(f"cannot rebuild the run's purifiers to measure quality: {exc}") from None
    name = None
    if isinstance(distance, str):
        from benchbench.models.perceptual import resolve_distance

        name = resolve_distance(distance, exp["dataset"])
        distance = perceptual_distance(name, exp["dataset"], device)
    table = measure_quality(purifiers, classifier, test.images, test.labels, exp["image_indices"], exp["sigmas"],
                            seed=exp["seed"], copies=copies, distance=distance, n0=exp["n0"], n=exp["n"],
                            batch_size=int(config.get("environment", {}).get("batch_size") or DEFAULT_BATCH),
                            noise_device=device if exp.get("noise_device", "cpu") != "cpu" else "cpu")
    if name is not None:
        table["distance_name"] = name
    write_atomic(run_dir / QUALITY_FILE, table.to_csv(index=False))
    return table
