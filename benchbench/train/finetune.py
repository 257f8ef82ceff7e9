"""Consistency Fine-tuning (Li et al., NeurIPS 2024, "Consistency Purification") of a distilled model.

Starting from a distilled consistency model, minimise E_{x, σ∈S, ε} d(f_θ(x_in, σ'), 2x − 1) over ``train``
images x in [0, 1], where x_in = 2(x + σε) − 1 has VE noise level 2σ and σ' is the level the purifier's
``sigma_mode`` gives the model (the grid level nearest to 2σ in the default ``nearest`` mode, 2σ itself in
``exact``, the next grid level after a noise top-up in ``topup``), exactly as the consistency purifiers call it; d is the dataset's LPIPS-style distance
(on digits: the independent ``digits-ssl`` network, not the certified classifier). Each batch is split
evenly over S. The loss uses f's raw output (the purifier clips to [-1, 1] afterwards; clipping here would
stop the gradient of every pixel pushed past ±1). With ``anchor_weight`` = 0 (the default) this is Li et
al.'s objective and nothing else.

Optional, with weight ``anchor_weight`` > 0 (an ablation, not the paper): :func:`anchor_loss`, the distance
between f_θ and the frozen distilled model at grid levels the objective does not train, which keeps the
one-step samples (FD) near the distilled model's. The README reports both settings, measured on ``val``.

Saved with ``ConsistencyModelPipeline.save_pretrained``, with a manifest holding the distance, the base
model's fingerprint, and the purification scores of both models.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from benchbench.data.dataset import get_dataset
from benchbench.errors import InvalidArgument
from benchbench.models.consistency import ConsistencyModel, assumed_level, first_call, grid_level, load_consistency
from benchbench.models.store import embedded_path, fingerprint, read_manifest
from benchbench.models.perceptual import Distance, distance_record, get_distance, resolve_distance
from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE, check_sigma_mode
from benchbench.train.distill import check_image_shape
from benchbench.train.common import (LossLog, ema_copy, optimizer_step, prepare_output, seed_everything,
                                     write_manifest)


@dataclass
class FinetuneConfig:
    dataset: str = "digits"
    base: str | None = None        # distilled model reference (kind "consistency"); None: the dataset's embedded one
    data_dir: str | None = None    # where the dataset's files live (default: $BENCH_DATA_DIR or ./data)
    evaluate: bool | None = None   # FD and purification scores after training; None: on digits only
    steps: int = 1200
    batch_size: int = 96           # split evenly over `sigmas`
    lr: float = 2e-4
    warmup: int = 50
    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)   # S, certification σ in image scale
    ema_decay: float = 0.99        # the saved weights: EMA of θ
    distance: str = "lpips"        # "lpips" (the dataset's default LPIPS: digits-ssl on digits), or a name in DISTANCES
    anchor_weight: float = 0.0     # weight of anchor_loss; 0 = the plain Li et al. objective (the default)
    sigma_mode: str = DEFAULT_SIGMA_MODE  # how f is called at 2σ, as the purifier will call it
    anchor_batch: int = 48
    seed: int = 0


def finetune_loss(model: ConsistencyModel, x: torch.Tensor, sigmas: Sequence[float], distance: Distance,
                  generator: torch.Generator, sigma_mode: str = DEFAULT_SIGMA_MODE) -> torch.Tensor:
    """Mean d(f_θ(2(x + σε) − 1 at the level ``sigma_mode`` gives it), 2x − 1) over the batch ``x`` (in
    [0, 1]), split evenly over ``sigmas``; all noise from ``generator`` (CPU). One network call per image,
    unclipped (see the module docstring)."""
    losses = []
    for chunk, sigma in zip(x.chunk(len(sigmas)), sigmas):
        noise = torch.randn(chunk.shape, generator=generator).to(chunk.device)
        x_in, level, _ = first_call(model, chunk + sigma * noise, sigma, sigma_mode, generator)
        losses.append(distance(model(x_in, level), 2 * chunk - 1))
    return torch.cat(losses).mean()


def trained_levels(sigmas: torch.Tensor, sigma: float, sigma_mode: str) -> set[int]:
    """Indices into the grid ``sigmas`` of the levels fine-tuning at image-scale σ trains in ``sigma_mode``:
    the level the purifier calls the model at (``nearest`` / ``nearest-log``: the nearest to 2σ by each one's
    rule; ``topup``: the next at or above 2σ); ``exact`` trains at 2σ itself, between grid levels, so both
    levels around it count."""
    k = grid_level(sigmas, sigma, sigma_mode)
    if sigma_mode != "exact" or abs(float(sigmas[k]) / (2 * sigma) - 1) < 1e-9:
        return {k}
    return {k, k + 1}  # the grid descends: k + 1 is the level just below 2σ


def anchor_levels(sigmas: torch.Tensor, train_sigmas: Sequence[float], sigma_mode: str) -> list[int]:
    """The grid indices :func:`anchor_loss` draws from: every level but σ_min and those fine-tuning trains
    (:func:`trained_levels`) at any σ of ``train_sigmas``."""
    trained = set().union(*(trained_levels(sigmas, s, sigma_mode) for s in train_sigmas))
    return [k for k in range(len(sigmas) - 1) if k not in trained]


def anchor_loss(model: ConsistencyModel, base: ConsistencyModel, x: torch.Tensor, sigmas: Sequence[float],
                distance: Distance, generator: torch.Generator,
                sigma_mode: str = DEFAULT_SIGMA_MODE) -> torch.Tensor:
    """Mean d(f_θ(x_σ, σ), f_base(x_σ, σ)) at grid levels σ drawn per sample among those fine-tuning does
    not train in ``sigma_mode`` (:func:`anchor_levels`), x_σ = 2x − 1 + σ·z, x in [0, 1].

    It keeps the model a consistency model, with the distilled model's one-step samples, away from the
    purification levels, which the fine-tuning objective alone drags along (shared weights).
    """
    levels = torch.tensor(anchor_levels(model.sigmas, sigmas, sigma_mode))
    s = model.sigmas[levels[torch.randint(0, len(levels), (len(x),), generator=generator)]]
    x_s = 2 * x - 1 + s.to(x).view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator).to(x.device)
    with torch.no_grad():
        target = base(x_s, s)
    return distance(model(x_s, s), target).mean()


def train_finetune(out: str | Path, config: FinetuneConfig, device: str = "cpu") -> dict[str, Any]:
    """Fine-tune, save to ``out`` as a ConsistencyModelPipeline folder with a manifest, return the manifest."""
    from benchbench.train.acceptance import evaluate_consistency

    check_sigma_mode(config.sigma_mode)
    out = prepare_output(out)
    gen = seed_everything(config.seed)
    distance_name = resolve_distance(config.distance, config.dataset)
    if config.base is None:
        if not embedded_path(config.dataset, "consistency").is_dir():
            raise InvalidArgument(f"no embedded consistency model for dataset {config.dataset!r}: pass --base "
                                  f"(a folder written by bench train distill, or a hub id)")
        config.base = config.dataset
    train = get_dataset(config.dataset, "train", data_dir=config.data_dir)
    base = load_consistency(config.base, device, "consistency")
    check_image_shape(base.unet, train, f"base model {config.base!r}")
    x_train = train.images.to(device)
    model = copy.deepcopy(base).train().requires_grad_(True)
    base.requires_grad_(False)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    distance = get_distance(distance_name, device)
    opt = torch.optim.RAdam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup))
    start = time.time()
    bar = tqdm(range(config.steps), desc="fine-tune consistency", unit="step")
    log = LossLog(config.steps)
    for step in bar:
        idx = torch.randint(0, len(x_train), (config.batch_size,), generator=gen)
        loss = finetune_loss(model, x_train[idx.to(device)], config.sigmas, distance, gen, config.sigma_mode)
        if config.anchor_weight > 0:
            idx = torch.randint(0, len(x_train), (config.anchor_batch,), generator=gen)
            loss = loss + config.anchor_weight * anchor_loss(model, base, x_train[idx.to(device)], config.sigmas,
                                                             distance, gen, config.sigma_mode)
        optimizer_step(loss, model, opt, sched, ema)
        log.add(step, loss.item(), bar)
    seconds = time.time() - start
    final = ema_copy(model, ema)
    final.save_pretrained(out)
    metrics: dict[str, Any] = {"train_loss_smoothed": log.running, "loss_history": log.history,
                               "seconds_per_step": round(seconds / max(1, config.steps), 4)}
    if config.evaluate if config.evaluate is not None else config.dataset == "digits":
        kw = dict(dataset=config.dataset, distance=distance_name, sigmas=config.sigmas, sigma_mode=config.sigma_mode)
        before, after = evaluate_consistency(base.cpu(), **kw), evaluate_consistency(final, **kw)
        reduction = {s: 1 - after["purification"][s]["lpips"] / before["purification"][s]["lpips"]
                     for s in after["purification"]}
        metrics.update({**after, "base": before, "lpips_reduction_vs_base": reduction,
                        "checks": {"lpips_10pct_lower_at_every_sigma": all(r >= 0.10 for r in reduction.values()),
                                   "fd_within_1.5x_base": after["fd_one_step"] <= 1.5 * before["fd_one_step"]}})
    base_manifest = read_manifest(config.base, "consistency") or {}
    split = {"dataset": config.dataset, "train": len(train),
             "val": len(get_dataset(config.dataset, "val", data_dir=config.data_dir)), "metrics_on": "val"}
    cfg = {**asdict(config), **distance_record(distance_name), "distance_requested": config.distance,
           "objective": "Li et al. 2024" if config.anchor_weight == 0 else
                        f"Li et al. 2024 + anchor term (weight {config.anchor_weight:g})",
           "model_levels": {str(sg): assumed_level(base.sigmas, sg, config.sigma_mode) for sg in config.sigmas},
           "distill_distance": base_manifest.get("training_config", {}).get("distance"),
           "base_fingerprint": fingerprint(config.base, "consistency"), "split": split, "ema": True,
           "data_range": [-1, 1]}
    return write_manifest(out, kind="consistency-ft", config=cfg, metrics=metrics, seconds=seconds, device=device)
