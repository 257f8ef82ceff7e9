"""Quality of consistency models, measured the same way for the manifests and for a ``bench`` command.

Everything here is measured on the ``val`` split: the test split is read only by ``bench run``.

* Fréchet distance (FD) in the dataset classifier's penultimate features (``SmallCNN.features``, 128-d for
  digits) between ``n`` generated images and the whole val split; scipy's ``sqrtm`` for the matrix root.
  Measured for one-step samples f(σ_max·z, σ_max) and for the DDPM teacher's multi-step PF-ODE samples
  (diffusers' ``HeunDiscreteScheduler`` from the DDPM's own config). ``fd_train_vs_val`` (the train split
  against the val split) is the floor set by finite samples. (An evaluation metric only: no model is
  trained toward these features.)
* Purification at each certification σ (image scale): the val images plus N(0, σ²I) noise, purified as the
  consistency purifiers do (:func:`benchbench.models.consistency.purify`, in a given ``sigma_mode``),
  compared with the clean images: mean distance (the dataset's LPIPS-style distance, independent of the
  classifier; inputs in [-1, 1]), mean squared error in [0, 1] pixels, and the classifier's accuracy on
  the purified images.

All noise comes from CPU generators with fixed seeds: the numbers repeat exactly on one machine.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch
from scipy import linalg

from benchbench.train.criteria import CRITERIA
from benchbench.data.dataset import dataset_info, get_dataset
from benchbench.models.consistency import ConsistencyModel, load_consistency, purify
from benchbench.models.classifiers import load_classifier
from benchbench.models.store import load_ddpm
from benchbench.models.perceptual import get_distance, resolve_distance
from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE

CERT_SIGMAS = (0.25, 0.5, 1.0)
TEACHER_SOLVER = {"solver": "heun", "steps": 25, "karras_sigmas": True}  # 49 network calls per sample


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) between feature sets of shape (N, D) (float64)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    # ReLU features have dead units (zero variance), so the covariances are singular; a 1e-6 ridge keeps
    # sqrtm well posed and moves the distance by far less than its sampling error.
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(cov_a @ cov_b).real  # .real: rounding leaves tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def features(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Penultimate classifier features (float64, (N, D)) of images in [0, 1]."""
    device = next(classifier.parameters()).device
    out = [classifier.features(images[i:i + batch_size].to(device)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def one_step_samples(model: ConsistencyModel, n: int, seed: int = 0) -> torch.Tensor:
    """n samples f(σ_max·z, σ_max) in [0, 1] (one network call each), z from a CPU generator seeded ``seed``."""
    unet = model.unet
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    return (model(model.sigma_max * z.to(device), model.sigma_max).clamp(-1, 1).cpu() + 1) / 2


@functools.lru_cache(maxsize=4)
@torch.no_grad()
def teacher_samples(ref: str, n: int, seed: int = 0, solver: str = "heun", steps: int = 25,
                    karras_sigmas: bool = True, device: str = "cpu") -> torch.Tensor:
    """n PF-ODE samples in [0, 1] of the DDPM ``ref`` with diffusers' Heun (2·steps − 1 network calls) or
    Euler (``steps`` calls) discrete scheduler built from the DDPM's scheduler config."""
    from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

    unet, ddpm_scheduler = load_ddpm(ref, device)
    cls = {"heun": HeunDiscreteScheduler, "euler": EulerDiscreteScheduler}[solver]
    scheduler = cls.from_config(ddpm_scheduler.config, use_karras_sigmas=karras_sigmas)
    scheduler.set_timesteps(steps)
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(eps, t, x).prev_sample
    return (x.clamp(-1, 1).cpu() + 1) / 2


@torch.no_grad()
def purification_scores(model: ConsistencyModel, images: torch.Tensor, labels: torch.Tensor,
                        classifier: torch.nn.Module, distance: Any, sigmas: Sequence[float] = CERT_SIGMAS,
                        seed: int = 0, steps: int = 1,
                        sigma_mode: str = DEFAULT_SIGMA_MODE) -> dict[str, dict[str, float]]:
    """Per σ: mean distance(purified, clean) in [-1, 1], pixel MSE in [0, 1], classifier accuracy."""
    device = next(model.parameters()).device
    result = {}
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(seed)
        x_noisy = images + sigma * torch.randn(images.shape, generator=gen)
        purified = purify(model, x_noisy.to(device), sigma, gen, steps, mode=sigma_mode)
        clean = images.to(device)
        result[str(sigma)] = {
            "lpips": distance(2 * purified - 1, 2 * clean - 1).mean().item(),
            "mse": (purified - clean).pow(2).mean().item(),
            "accuracy": (classifier(purified).argmax(1).cpu() == labels).float().mean().item(),
        }
    return result


def evaluate_consistency(model: ConsistencyModel, *, dataset: str = "digits", teacher: str | None = None,
                         distance: str = "lpips", n: int = 450, seed: int = 0,
                         sigmas: Sequence[float] = CERT_SIGMAS, device: str = "cpu",
                         sigma_mode: str = DEFAULT_SIGMA_MODE) -> dict[str, Any]:
    """FD of one-step samples, of the teacher's PF-ODE samples (when ``teacher`` names a DDPM) and of the
    train split, each against the val split; and purification scores on val at ``sigmas`` in
    ``sigma_mode``."""
    info = dataset_info(dataset)
    classifier = load_classifier(info.default_classifier, device)
    val, train = get_dataset(dataset, "val"), get_dataset(dataset, "train")
    ref = features(classifier, val.images)
    model = model.to(device).eval()
    name = resolve_distance(distance, dataset)
    metrics: dict[str, Any] = {
        "split": "val", "fd_samples": n, "fd_seed": seed,
        "fd_one_step": frechet_distance(features(classifier, one_step_samples(model, n, seed)), ref),
        "fd_train_vs_val": frechet_distance(features(classifier, train.images), ref),
    }
    if teacher is not None:
        samples = teacher_samples(teacher, n, seed, device=device, **TEACHER_SOLVER)
        metrics["fd_teacher"] = frechet_distance(features(classifier, samples), ref)
        metrics["teacher_sampler"] = {**TEACHER_SOLVER, "ddpm": teacher}
    metrics["purification_distance"] = name
    metrics["purification_sigma_mode"] = sigma_mode
    metrics["purification"] = purification_scores(model, val.images, val.labels, classifier,
                                                  get_distance(name, device), sigmas, seed, sigma_mode=sigma_mode)
    return metrics


def consistency_quality_report(distilled: str = "digits", finetuned: str | None = "digits", *,
                               dataset: str = "digits", teacher: str | None = "digits", distance: str = "lpips",
                               n: int = 450, seed: int = 0, sigmas: Sequence[float] = CERT_SIGMAS,
                               device: str = "cpu", sigma_mode: str = DEFAULT_SIGMA_MODE) -> dict[str, Any]:
    """Measure a distilled model (kind ``consistency``) and optionally its fine-tuned version (kind
    ``consistency-ft``) on the val split, and check the acceptance criteria (:data:`CRITERIA`):

    * ``distilled_fd_within_2x_teacher``: FD(one-step) ≤ 2·FD(teacher PF-ODE);
    * ``finetuned_lpips_10pct_lower_at_every_sigma``: mean purification distance ≤ 0.9× the distilled one at
      every σ in ``sigmas``;
    * ``finetuned_fd_within_1.5x_distilled``: FD(one-step, fine-tuned) ≤ 1.5·FD(one-step, distilled).
    """
    kw = dict(dataset=dataset, distance=distance, n=n, seed=seed, sigmas=sigmas, device=device,
              sigma_mode=sigma_mode)
    cd = evaluate_consistency(load_consistency(distilled, device, "consistency"), teacher=teacher, **kw)
    report: dict[str, Any] = {"split": "val", "criteria": CRITERIA, "distilled": cd, "checks": {}}
    if teacher is not None:
        report["checks"]["distilled_fd_within_2x_teacher"] = cd["fd_one_step"] <= 2 * cd["fd_teacher"]
    if finetuned is not None:
        ft = evaluate_consistency(load_consistency(finetuned, device, "consistency-ft"), **kw)
        report["finetuned"] = ft
        report["lpips_reduction"] = {s: 1 - ft["purification"][s]["lpips"] / cd["purification"][s]["lpips"]
                                     for s in cd["purification"]}
        report["checks"]["finetuned_lpips_10pct_lower_at_every_sigma"] = all(
            r >= 0.10 for r in report["lpips_reduction"].values())
        report["checks"]["finetuned_fd_within_1.5x_distilled"] = ft["fd_one_step"] <= 1.5 * cd["fd_one_step"]
    return report


MODE_SIGMAS = (0.12, 0.25, 0.3, 0.5, 0.75, 1.0)


def sigma_mode_table(refs: Sequence[tuple[str, str]] = (("digits", "consistency"), ("digits", "consistency-ft")),
                     *, dataset: str = "digits", sigmas: Sequence[float] = MODE_SIGMAS,
                     modes: Sequence[str] = ("exact", "nearest", "nearest-log", "topup"), distance: str = "lpips",
                     seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per (model, σ, mode) on the val split: the level the model is given or assumes relative to
    2σ, and the purification scores (:func:`purification_scores`, same noise for every mode)."""
    from benchbench.models.consistency import assumed_level

    info = dataset_info(dataset)
    classifier = load_classifier(info.default_classifier, device)
    val = get_dataset(dataset, "val")
    dist = get_distance(resolve_distance(distance, dataset), device)
    rows = []
    for ref, kind in refs:
        model = load_consistency(ref, device, kind)
        for mode in modes:
            scores = purification_scores(model, val.images, val.labels, classifier, dist, sigmas, seed,
                                         sigma_mode=mode)
            for sigma in sigmas:
                rows.append({"model": kind if ref == dataset else f"{kind}:{ref}", "sigma": sigma, "mode": mode,
                             "level_vs_2sigma": assumed_level(model.sigmas, sigma, mode) / (2 * sigma) - 1,
                             **scores[str(sigma)]})
    return rows
