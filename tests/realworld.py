"""Offline stand-ins for the real world, written by the tests: a CIFAR-10-format folder, an Imagenet64 npz,
and tiny randomly initialised models of the real classes and configs, saved with ``save_pretrained``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 4, test: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` in the python-pickle format (5 training batches, a test batch, the
    meta file); images (N, 3072) uint8, R plane then G then B, labels 0…9. Returns ``root``."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name: str, n: int) -> None:
        entry = {"batch_label": name, "labels": [int(v) for v in rng.randint(0, 10, n)],
                 "data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES, "num_vis": 3072}))
    return root


def write_imagenet64(root: Path, n: int = 6, seed: int = 0, labels: list[int] | None = None) -> Path:
    """``root/Imagenet64_val_npz/val_data.npz``: ``data`` (n, 12288) uint8 (R, G, B planes of 64×64) and
    1-based ``labels``. Returns ``root``."""
    rng = np.random.RandomState(seed)
    folder = root / "Imagenet64_val_npz"
    folder.mkdir(parents=True)
    labels = labels or [int(v) for v in rng.randint(1, 1001, n)]
    np.savez(folder / "val_data.npz", data=rng.randint(0, 256, (len(labels), 12288)).astype(np.uint8),
             labels=np.array(labels))
    return root


def write_class_map(folder: Path, seed: int = 1) -> list[int]:
    """``folder/map_clsloc.txt``: devkit ids 1…1000 over the wnids n00000000…n00000999 in a shuffled order.
    Returns, per 0-based devkit id, the wnid's index in sorted order (what the mapped label must be)."""
    order = [int(v) for v in np.random.RandomState(seed).permutation(1000)]
    lines = [f"n{w:08d} {i + 1} name{i}" for i, w in enumerate(order)]
    (folder / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    return order


def tiny_unet(size: int, out_channels: int = 3, num_class_embeds: int | None = None, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=num_class_embeds)


def save_cosine_learned_ddpm(path: Path, size: int = 32, prediction_type: str = "epsilon") -> Path:
    """A DDPMPipeline folder: cosine (squaredcos_cap_v2) β, learned_range variance (6 output channels),
    as improved-diffusion's models."""
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              variance_type="learned_range", prediction_type=prediction_type)
    DDPMPipeline(unet=tiny_unet(size, out_channels=6), scheduler=scheduler).save_pretrained(path)
    return path


def save_class_conditional_cm(path: Path, size: int = 32, classes: int = 10) -> Path:
    """A ConsistencyModelPipeline folder whose UNet is class-conditional (``num_class_embeds``), with a
    CMStochasticIterativeScheduler grid like openai's (σ_max = 80, 40 levels)."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    ConsistencyModelPipeline(unet=tiny_unet(size, num_class_embeds=classes, seed=1),
                             scheduler=scheduler).save_pretrained(path)
    return path


def save_tiny_vit(path: Path, num_labels: int = 10, image_size: int = 16) -> Path:
    """A transformers ViTForImageClassification with its image processor (size, mean, std), both saved
    with save_pretrained into ``path``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=num_labels)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.4, 0.3],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path
