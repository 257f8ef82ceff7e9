"""Purification quality: how close each purifier's output is to the clean image, and whether the classifier
still sees the right digit in it.

For each purifier configuration, σ and run image, the purifier gets the first ``copies`` noisy copies of
the certification noise (the runner's generator for (seed, image, σ), so the same draws every purifier and
the certificates saw) and the result is compared with the clean image:

* ``mse``: mean squared error per pixel in [0, 1] image scale, averaged over copies and images;
* ``distance``: the mean of a caller-supplied ``distance(a, b) -> per-image tensor`` (e.g. an LPIPS-style
  metric), absent when none is given;
* ``label_kept``: the fraction of purified copies the classifier labels with the true label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from benchbench.certify import NOISE_BLOCK, noisy_batches
from benchbench.errors import BenchError, InvalidArgument
from benchbench.registry import Purifier, get_purifier
from benchbench.report import QUALITY_FILE
from benchbench.results import CONFIG
from benchbench.runner import majority_vote, noise_generator, purify_copies, seed_purifier

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance(a, b)``: two batches (B, C, H, W) in [0, 1] → per-image distances, shape (B,)."""

DEFAULT_COPIES = 8


def noisy_copies(x: torch.Tensor, sigma: float, *, seed: int, idx: int, copies: int,
                 n0: int | None = None) -> torch.Tensor:
    """The first ``copies`` noisy copies of image ``idx`` that certification drew at σ: (copies, *x.shape).

    Certification draws its first block of min(NOISE_BLOCK, n0) samples in one call; given the run's
    ``n0`` (and copies ≤ that block) the same block is drawn here and cut, so the copies are those draws
    whatever the image size. Without n0 only ``copies`` are drawn, which gives the same values whenever
    the image has a multiple of 16 values (torch's CPU normal sampler fills 16 at a time).
    """
    draw = copies if n0 is None else max(copies, min(NOISE_BLOCK, n0))
    gen = noise_generator(seed, idx, sigma)
    return next(noisy_batches(x, draw, sigma=sigma, batch_size=draw, generator=gen))[:copies]


@torch.no_grad()
def measure_quality(purifiers: Mapping[str, Purifier], classifier: torch.nn.Module, images: torch.Tensor,
                    labels: torch.Tensor, indices: Sequence[int], sigmas: Sequence[float], *, seed: int,
                    copies: int = DEFAULT_COPIES, distance: Distance | None = None,
                    n0: int | None = None) -> pd.DataFrame:
    """One row per (purifier label, σ), purifiers in mapping order and σ as given: ``purifier sigma images
    copies mse [distance] label_kept``. ``images[idx]`` is a clean image in [0, 1], ``labels[idx]`` its
    class; ``distance`` gets the purified copies and the clean image repeated, both in [0, 1] image scale
    (wrap a distance that wants [-1, 1]); ``n0`` is the run's (see :func:`noisy_copies`). The computation
    runs on the classifier's device."""
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
                from benchbench.models.store import load_classifier

                clf = load_classifier(purifier.classifier_for(sigma), device)
            mse, dist, kept = [], [], []
            for idx in indices:
                x = images[idx].to(device)
                seed_purifier(purifier, seed=seed, idx=idx, sigma=sigma)
                noisy = noisy_copies(x, sigma, seed=seed, idx=idx, copies=copies, n0=n0)
                purified = purify_copies(purifier, noisy, sigma, seed=seed, idx=idx)
                clean = x.unsqueeze(0).expand_as(purified)
                mse.append(((purified - clean) ** 2).flatten(1).mean(1))
                if distance is not None:
                    dist.append(torch.as_tensor(distance(purified, clean)).reshape(-1).float())
                votes = int(getattr(purifier, "votes", 1))  # K samples per copy: the label is their majority
                pred = majority_vote(clf(purified).argmax(1), votes, int(clf(x[None]).shape[1]))
                kept.append((pred == int(labels[idx])).float())
            rec = {"purifier": label, "sigma": float(sigma), "images": len(indices), "copies": copies,
                   "mse": torch.cat(mse).mean().item()}
            if distance is not None:
                rec["distance"] = torch.cat(dist).mean().item()
            rec["label_kept"] = torch.cat(kept).mean().item()
            out.append(rec)
    return pd.DataFrame(out)


def perceptual_distance(name: str, dataset: str, device: str = "cpu") -> Distance:
    """The LPIPS-style distance ``name`` (``lpips`` = the dataset's default, see :mod:`benchbench.perceptual`)
    taking images in [0, 1], as :func:`measure_quality` wants; raises CheckpointError when its backbone
    weights are missing."""
    from benchbench.perceptual import get_distance, resolve_distance

    d = get_distance(resolve_distance(name, dataset), device)
    return lambda a, b: d(2 * a - 1, 2 * b - 1)


def write_quality(run_dir: Path | str, *, distance: Distance | str | None = "lpips", copies: int = DEFAULT_COPIES,
                  device: str = "cpu") -> pd.DataFrame:
    """Measure the quality of every purifier configuration of a run, at its σs and on its images, with the
    run's classifier and seed; write ``quality.csv`` into the run directory and return it. ``distance`` is a
    callable, a distance name for :func:`perceptual_distance` (recorded in a ``distance_name`` column), or
    None to skip it."""
    from benchbench.data import get_dataset
    from benchbench.models.store import load_classifier

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise InvalidArgument(f"{run_dir} is not a benchbench run directory (no {CONFIG})")
    exp = json.loads((run_dir / CONFIG).read_text())["experiment"]
    try:
        purifiers = {p["label"]: get_purifier(p["name"], **p["params"], device=device, dataset=exp["dataset"])
                     for p in exp["purifiers"]}
    except BenchError as exc:
        raise BenchError(f"cannot rebuild the run's purifiers to measure quality: {exc}") from None
    test = get_dataset(exp["dataset"], "test")
    classifier = load_classifier(exp["classifier"]["ref"], device)
    name = None
    if isinstance(distance, str):
        from benchbench.perceptual import resolve_distance

        name = resolve_distance(distance, exp["dataset"])
        distance = perceptual_distance(name, exp["dataset"], device)
    table = measure_quality(purifiers, classifier, test.images, test.labels, exp["image_indices"], exp["sigmas"],
                            seed=exp["seed"], copies=copies, distance=distance, n0=exp["n0"])
    if name is not None:
        table["distance_name"] = name
    table.to_csv(run_dir / QUALITY_FILE, index=False)
    return table
