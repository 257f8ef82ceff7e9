"""Train the embedded default classifier on digits.

With ``noise_sd`` = 0 (the default) it trains on clean images: the off-the-shelf classifier of the
purification setting. With ``noise_sd`` = S > 0 every training batch gets fresh Gaussian noise N(0, S²I) in
[0, 1] image scale, unclipped (Cohen et al. 2019's training for the smoothed classifier at σ = S): the
"Cohen et al." baseline, certified with no purifier. Metrics are measured on the ``val`` split (at noise
level S with a fixed seed when S > 0).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchbench.data.dataset import get_dataset
from benchbench.models.classifier import SmallCNN
from benchbench.train.common import prepare_output, seed_everything, write_manifest


@dataclass
class ClassifierConfig:
    dataset: str = "digits"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 32
    noise_sd: float = 0.0   # Gaussian augmentation σ in [0, 1] image scale (Cohen et al.); 0 = clean
    seed: int = 0


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
             noise_sd: float = 0.0, seed: int = 12345) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on images in [0, 1], plus N(0, noise_sd²I) noise drawn from a
    CPU generator seeded ``seed`` when ``noise_sd`` > 0."""
    model.eval()
    if noise_sd > 0:
        images = images + noise_sd * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += (model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(labels)


def train_classifier(out: str | Path, config: ClassifierConfig, device: str = "cpu") -> dict[str, Any]:
    """Train, save to ``out`` in save_pretrained layout with a manifest, and return the manifest."""
    out = prepare_output(out)
    gen = seed_everything(config.seed)
    train, val = get_dataset(config.dataset, "train"), get_dataset(config.dataset, "val")
    model = SmallCNN(in_channels=train.images.shape[1], num_classes=train.num_classes, width=config.width,
                     image_size=train.images.shape[-1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    x_all, y_all = train.images.to(device), train.labels.to(device)
    start = time.time()
    bar = tqdm(range(config.epochs), desc="train classifier", unit="epoch")
    for _ in bar:
        model.train()
        perm = torch.randperm(len(train), generator=gen).to(device)
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i:i + config.batch_size]
            x = x_all[idx]
            if config.noise_sd > 0:
                x = x + config.noise_sd * torch.randn(x.shape, generator=gen).to(device)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - start
    model = model.cpu()
    metrics = {
        "train_accuracy": accuracy(model, train.images, train.labels),
        "val_accuracy": accuracy(model, val.images, val.labels),
    }
    if config.noise_sd > 0:
        metrics[f"val_accuracy_noise_{config.noise_sd:g}"] = accuracy(model, val.images, val.labels,
                                                                      noise_sd=config.noise_sd)
    model.save_pretrained(out)
    split = {"dataset": config.dataset, "train": len(train), "val": len(val), "metrics_on": "val"}
    return write_manifest(out, kind="classifier", config={**asdict(config), "split": split},
                          metrics=metrics, seconds=seconds, device=device)
