"""Train the perceptual feature network (:class:`benchbench.models.feature_net.FeatureNet`) without labels.

SimCLR (Chen et al. 2020): two random views of each ``train`` image (per-sample affine jitter — rotation,
shift, scale, shear — and a random contrast factor), the NT-Xent loss on the projections at temperature
``temperature``. No label is read in training. The manifest reports, on ``val``, the accuracy of a linear
probe (scikit-learn logistic regression fitted on the ``train`` features) and of 1-nearest-neighbour in
feature space: the check that the features carry the digits' shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchbench.data.dataset import get_dataset
from benchbench.models.feature_net import FeatureNet
from benchbench.train.common import LossLog, optimizer_step, prepare_output, seed_everything, write_manifest


@dataclass
class PerceptualConfig:
    dataset: str = "digits"
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 50
    temperature: float = 0.2
    widths: tuple[int, ...] = (24, 48, 96, 96)
    max_degrees: float = 12.0
    max_shift: float = 0.15      # fraction of the image side (torch's affine grid spans [-1, 1]: 2 = the side)
    scale: tuple[float, float] = (0.85, 1.15)
    max_shear: float = 0.15
    contrast: tuple[float, float] = (0.6, 1.0)
    seed: int = 7                # not the classifier's seed (0)


def augment(x: torch.Tensor, config: PerceptualConfig, generator: torch.Generator) -> torch.Tensor:
    """A random view of each image of ``x`` (in [-1, 1]): its own affine jitter and contrast per sample.

    Hand-written with ``affine_grid``: torchvision's RandomAffine draws one transform per call (per batch),
    and contrastive learning needs an independent one per sample.
    """
    b = len(x)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=generator)  # noqa: E731
    angle = u(-config.max_degrees, config.max_degrees) * math.pi / 180
    scale = u(*config.scale)
    shear = u(-config.max_shear, config.max_shear)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, u(-2 * config.max_shift, 2 * config.max_shift)], 1),
                         torch.stack([sin, cos, u(-2 * config.max_shift, 2 * config.max_shift)], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    # Background is -1 (white paper = 0 in [0, 1]): shift to 0-background for zero padding, then back.
    views = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    return (views + 1) * u(*config.contrast).to(x).view(-1, 1, 1, 1) - 1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss for projections of two views, (B, D) each: the positive of row i is the other
    view of image i, every other row of the 2B is a negative. Written out (a few lines of cross-entropy)
    rather than adding a metric-learning dependency."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


@torch.no_grad()
def probe_accuracy(net: FeatureNet, train_images: torch.Tensor, train_labels: torch.Tensor,
                   val_images: torch.Tensor, val_labels: torch.Tensor) -> dict[str, float]:
    """Linear-probe and 1-NN accuracy on ``val`` of the frozen features (fitted on ``train``); images in [0, 1]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    net.eval()
    a, b = net.embed(2 * train_images - 1).numpy(), net.embed(2 * val_images - 1).numpy()
    scaler = StandardScaler().fit(a)
    a, b = scaler.transform(a), scaler.transform(b)
    ya, yb = train_labels.numpy(), val_labels.numpy()
    probe = LogisticRegression(max_iter=2000).fit(a, ya)
    knn = KNeighborsClassifier(n_neighbors=1).fit(a, ya)
    return {"linear_probe_val_accuracy": float(np.mean(probe.predict(b) == yb)),
            "knn1_val_accuracy": float(np.mean(knn.predict(b) == yb))}


def train_perceptual(out: str | Path, config: PerceptualConfig, device: str = "cpu") -> dict[str, Any]:
    """Train, save to ``out`` (save_pretrained layout) with a manifest, and return the manifest."""
    from diffusers.training_utils import EMAModel

    out = prepare_output(out)
    gen = seed_everything(config.seed)
    train, val = get_dataset(config.dataset, "train"), get_dataset(config.dataset, "val")
    x_train = (train.images * 2 - 1).to(device)
    net = FeatureNet(in_channels=x_train.shape[1], widths=tuple(config.widths), image_size=x_train.shape[-1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    ema = EMAModel(net.parameters(), decay=0.0)  # optimizer_step wants one; decay 0 = the weights themselves
    start = time.time()
    log = LossLog(config.steps, digits=5)
    for step in (bar := tqdm(range(config.steps), desc="train perceptual (SimCLR)", unit="step")):
        net.train()
        x = x_train[torch.randint(0, len(x_train), (config.batch_size,), generator=gen).to(device)]
        loss = nt_xent(net(augment(x, config, gen)), net(augment(x, config, gen)), config.temperature)
        optimizer_step(loss, net, opt, sched, ema)
        log.add(step, loss.item(), bar)
    seconds = time.time() - start
    net = net.cpu().eval()
    metrics = {"train_loss_smoothed": log.running, "loss_history": log.history,
               **probe_accuracy(net, train.images, train.labels, val.images, val.labels)}
    net.save_pretrained(out)
    split = {"dataset": config.dataset, "train": len(train), "val": len(val), "metrics_on": "val",
             "labels_used_in_training": False}
    return write_manifest(out, kind="perceptual", config={**asdict(config), "split": split, "method": "SimCLR"},
                          metrics=metrics, seconds=seconds, device=device)
