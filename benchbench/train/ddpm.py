"""Train the embedded default DDPM: diffusers' UNet2DModel + DDPMScheduler, ε-prediction, data in [-1, 1].

Saved with ``DDPMPipeline.save_pretrained`` so that ``diffusers.DDPMPipeline.from_pretrained(out)`` loads it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from benchbench.data.dataset import get_dataset
from benchbench.train.common import (ema_copy, optimizer_step, prepare_output, seed_everything, smoothed,
                                     write_manifest)


@dataclass
class DDPMConfig:
    dataset: str = "digits"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    layers_per_block: int = 1
    seed: int = 0


def build_unet(config: DDPMConfig, channels: int, size: int) -> UNet2DModel:
    up = tuple(t.replace("Down", "Up") for t in reversed(config.down_block_types))
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels,
        layers_per_block=config.layers_per_block, block_out_channels=config.block_out_channels,
        down_block_types=config.down_block_types, up_block_types=up, norm_num_groups=8,
    )


@torch.no_grad()
def eps_mse(unet: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, timesteps: list[int],
            generator: torch.Generator) -> dict[str, float]:
    """Mean squared ε-prediction error on ``x0`` (in [-1, 1]) at each of ``timesteps``."""
    unet.eval()
    result = {}
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator)
        tt = torch.full((len(x0),), t, dtype=torch.long)
        pred = unet(scheduler.add_noise(x0, noise, tt), tt).sample
        result[str(t)] = F.mse_loss(pred, noise).item()
    return result


def train_ddpm(out: str | Path, config: DDPMConfig, device: str = "cpu") -> dict[str, Any]:
    """Train, save to ``out`` as a DDPMPipeline folder with a manifest, and return the manifest."""
    out = prepare_output(out)
    gen = seed_everything(config.seed)
    train, val = get_dataset(config.dataset, "train"), get_dataset(config.dataset, "val")
    x_train = (train.images * 2 - 1).to(device)
    unet = build_unet(config, x_train.shape[1], x_train.shape[-1]).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    lr_at = lambda s: min(1.0, (s + 1) / config.warmup) * max(0.05, 1 - s / config.steps)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.time()
    bar = tqdm(range(config.steps), desc="train ddpm", unit="step")
    running = None
    for _ in bar:
        unet.train()
        idx = torch.randint(0, len(x_train), (config.batch_size,), generator=gen)
        x0 = x_train[idx.to(device)]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, config.num_train_timesteps, (len(x0),), generator=gen).to(device)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer_step(loss, unet, opt, sched, ema)
        running = smoothed(running, loss.item())
        bar.set_postfix(loss=f"{running:.4f}")
    seconds = time.time() - start
    final = ema_copy(unet, ema)
    eval_gen = torch.Generator().manual_seed(12345)
    metrics = {
        "train_loss_ema_smoothed": running,
        "val_eps_mse_by_t": eps_mse(final, scheduler, val.images * 2 - 1, [10, 50, 100, 200, 400, 700], eval_gen),
    }
    DDPMPipeline(unet=final, scheduler=scheduler).save_pretrained(out)
    split = {"dataset": config.dataset, "train": len(train), "val": len(val), "metrics_on": "val"}
    cfg = {**asdict(config), "split": split, "ema": True, "prediction_type": "epsilon", "data_range": [-1, 1]}
    return write_manifest(out, kind="ddpm", config=cfg, metrics=metrics, seconds=seconds, device=device)
