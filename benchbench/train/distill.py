"""Consistency distillation (Song et al. 2023, Algorithm 2) of the embedded DDPM into a one-step model.

For x₀ from the data (in [-1, 1]), a grid pair σ_{n+1} > σ_n drawn uniformly per sample and z ~ N(0, I):
x_{n+1} = x₀ + σ_{n+1}·z, x̂_n = one Heun step of the teacher's PF-ODE from σ_{n+1} to σ_n, and the loss is
d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)), with θ⁻ ← μ·θ⁻ + (1 − μ)·θ the target network (no gradient).
Initialisation: Song et al. start the student from the teacher, whose EDM parameterisation is the
student's, so f_θ = D_teacher at step 0. Here the teacher is an ε-prediction DDPM (other input scaling, time
input and output), so the student copies the teacher's UNet weights (same architecture) and then spends
``warm_start_steps`` regressing f_θ(x, σ) onto the teacher's denoiser D(x, σ) = x − σ·ε̂ (ℓ2), which
restores that starting point before distillation proper. An EMA of the student (decay ``ema_decay``) is what
gets saved.

Saved with ``ConsistencyModelPipeline.save_pretrained``: ``diffusers.ConsistencyModelPipeline.from_pretrained``
loads it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from benchbench.data.dataset import dataset_info, get_dataset
from benchbench.errors import BenchError, InvalidArgument
from benchbench.models.consistency import ConsistencyModel, make_scheduler
from benchbench.models.ddpm_ve import DDPMAsVE
from benchbench.models.store import fingerprint, load_ddpm
from benchbench.models.perceptual import Distance, distance_record, get_distance, resolve_distance
from benchbench.train.common import (LossLog, ema_copy, optimizer_step, prepare_output, seed_everything,
                                     write_manifest)


@dataclass
class DistillConfig:
    dataset: str = "digits"
    teacher: str | None = None     # DDPM reference (embedded name, folder or hub id); None: the dataset's
    data_dir: str | None = None    # where the dataset's files live (default: $BENCH_DATA_DIR or ./data)
    evaluate: bool | None = None   # FD and purification scores after training; None: on digits only
    steps: int = 2600
    batch_size: int = 96
    lr: float = 4e-4
    warmup: int = 100
    num_levels: int = 16           # N; with σ_max = 90, 2σ = 0.5, 1, 2 lie ≤ 5.5% below a grid level
    sigma_min: float = 0.002
    sigma_max: float = 90.0
    sigma_data: float = 0.5
    rho: float = 7.0
    target_ema: float = 0.0        # μ of θ⁻; 0 = stop-gradient copy of θ (faster here than Song et al.'s 0.95)
    ema_decay: float = 0.999       # the saved weights: EMA of θ
    distance: str = "lpips"        # "lpips" (the dataset's default LPIPS: digits-ssl on digits), or a name in DISTANCES
    init_from_teacher: bool = True
    warm_start_steps: int = 300    # first regress f_θ onto the teacher's denoiser D (see warm_start_loss)
    seed: int = 0


def build_student(teacher_unet: UNet2DModel, config: DistillConfig) -> ConsistencyModel:
    """A consistency model with the teacher's UNet architecture, initialised from its weights if asked.
    A learned-variance teacher (2·C output channels) gives a student with C: the mean part of its output
    layer."""
    channels = teacher_unet.config.in_channels
    unet = UNet2DModel.from_config(teacher_unet.config, out_channels=channels)
    if config.init_from_teacher:
        state = teacher_unet.state_dict()
        for key in ("conv_out.weight", "conv_out.bias"):
            state[key] = state[key][:channels]
        unet.load_state_dict(state)
    scheduler = make_scheduler(config.num_levels, config.sigma_min, config.sigma_max, config.sigma_data, config.rho)
    return ConsistencyModel(unet, scheduler)


def check_image_shape(unet: UNet2DModel, data: object, what: str) -> None:
    """Refuse, before training, a UNet whose input shape is not the dataset's images' shape."""
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    if tuple(shape) != tuple(data.images.shape[1:]):
        raise BenchError(f"{what} takes images of shape {tuple(shape)}; dataset {data.name!r} has "
                         f"{tuple(data.images.shape[1:])}")


def warm_start_loss(student: ConsistencyModel, teacher: DDPMAsVE, x0: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """Mean squared error between f_θ(x, σ) and the teacher's denoiser D(x, σ) = x − σ·ε̂ at grid levels
    σ > σ_min drawn per sample, x = x₀ + σ·z (x₀ in [-1, 1])."""
    sigmas = student.sigmas[:-1]
    s = sigmas[torch.randint(0, len(sigmas), (len(x0),), generator=generator)]
    x = x0 + s.to(x0).view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator).to(x0.device)
    with torch.no_grad():
        target = teacher.denoise(x, s)
    return (student(x, s) - target).pow(2).mean()


def distillation_loss(student: ConsistencyModel, target: ConsistencyModel, teacher: DDPMAsVE, x0: torch.Tensor,
                      distance: Distance, generator: torch.Generator) -> torch.Tensor:
    """Mean consistency-distillation loss on the batch ``x0`` (in [-1, 1]); grid pairs and noise come from
    ``generator`` (CPU), so one seed gives one loss whatever the device."""
    sigmas = student.sigmas  # descending
    n = torch.randint(0, len(sigmas) - 1, (len(x0),), generator=generator)
    s_hi, s_lo = sigmas[n], sigmas[n + 1]
    z = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_hi = x0 + s_hi.to(x0).view(-1, 1, 1, 1) * z
    with torch.no_grad():
        x_lo = teacher.heun_step(x_hi, s_hi, s_lo)
        y_target = target(x_lo, s_lo)
    return distance(student(x_hi, s_hi), y_target).mean()


def train_distill(out: str | Path, config: DistillConfig, device: str = "cpu") -> dict[str, Any]:
    """Distil, save to ``out`` as a ConsistencyModelPipeline folder with a manifest (quality metrics from
    :func:`benchbench.train.acceptance.evaluate_consistency` included), and return the manifest."""
    from benchbench.train.acceptance import evaluate_consistency

    out = prepare_output(out)
    gen = seed_everything(config.seed)
    distance_name = resolve_distance(config.distance, config.dataset)
    config.teacher = config.teacher or dataset_info(config.dataset).default_ddpm
    if config.teacher is None:
        raise InvalidArgument(f"no default DDPM for dataset {config.dataset!r}: pass --teacher")
    train = get_dataset(config.dataset, "train", data_dir=config.data_dir)
    teacher_unet, teacher_scheduler = load_ddpm(config.teacher, device)
    check_image_shape(teacher_unet, train, f"teacher {config.teacher!r}")
    x_train = (train.images * 2 - 1).to(device)
    teacher = DDPMAsVE(teacher_unet.requires_grad_(False), teacher_scheduler)
    student = build_student(teacher_unet, config).to(device).train()
    ema = EMAModel(student.parameters(), decay=config.ema_decay)
    distance = get_distance(distance_name, device)
    opt = torch.optim.RAdam(student.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup))
    start = time.time()
    bar = tqdm(range(config.steps), desc="distil consistency", unit="step")
    log = LossLog(config.steps)
    for step in bar:
        if step == config.warm_start_steps:  # θ⁻ starts from θ as it is after the warm start
            target = copy.deepcopy(student).requires_grad_(False)
            # min_decay = decay: a constant μ from the first step, as in Song et al. (no EMA warm-up for θ⁻).
            target_ema = EMAModel(student.parameters(), decay=config.target_ema, min_decay=config.target_ema)
        idx = torch.randint(0, len(x_train), (config.batch_size,), generator=gen)
        x0 = x_train[idx.to(device)]
        if step < config.warm_start_steps:
            loss = warm_start_loss(student, teacher, x0, gen)
        else:
            loss = distillation_loss(student, target, teacher, x0, distance, gen)
        optimizer_step(loss, student, opt, sched, ema)
        if step >= config.warm_start_steps:
            target_ema.step(student.parameters())
            target_ema.copy_to(target.parameters())
        log.add(step, loss.item(), bar)
    seconds = time.time() - start
    final = ema_copy(student, ema)
    final.save_pretrained(out)
    metrics = {"train_loss_smoothed": log.running, "loss_history": log.history,
               "seconds_per_step": round(seconds / max(1, config.steps), 4)}
    if config.evaluate if config.evaluate is not None else config.dataset == "digits":
        metrics.update(evaluate_consistency(final, dataset=config.dataset, teacher=config.teacher))
    split = {"dataset": config.dataset, "train": len(train),
             "val": len(get_dataset(config.dataset, "val", data_dir=config.data_dir)), "metrics_on": "val"}
    cfg = {**asdict(config), **distance_record(distance_name), "distance_requested": config.distance, "split": split,
           "teacher_fingerprint": fingerprint(config.teacher, "ddpm"),
           "teacher_solver": "heun (one step per grid pair)",
           "ema": True, "data_range": [-1, 1]}
    return write_manifest(out, kind="consistency", config=cfg, metrics=metrics, seconds=seconds, device=device)
