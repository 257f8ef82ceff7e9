"""Seconds per optimiser step of `bench train distill` on CIFAR-10-shaped data, with a teacher of
google/ddpm-cifar10-32's architecture (its unet/config.json: UNet2DModel, block_out_channels 128-256-256-256,
attention at 16×16, 2 layers per block; linear β 1e-4…0.02, 1000 steps, ε-prediction) but random weights,
so it runs offline. Measures time, not quality.

    python benchmarks/distill_step_time.py [--steps 4] [--batch-size 16] [--device cpu] [--threads 1]

The first step is the warm start's (one teacher call); the rest are distillation proper (a Heun teacher step
= 2 teacher calls, one target call, the student's forward and backward), which is what the run spends its
time on; the figure printed is the mean over those.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from realworld import write_cifar10

    from benchbench.train import distill

    root = Path(tempfile.mkdtemp())
    write_cifar10(root / "data", per_batch=max(8, args.batch_size))
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       freq_shift=1, flip_sin_to_cos=False, norm_eps=1e-6)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              variance_type="fixed_large")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "teacher")

    stamps: list[float] = []
    original = distill.optimizer_step

    def timed_step(*a, **k):  # stamp after every optimiser step
        original(*a, **k)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    distill.optimizer_step = timed_step
    cfg = distill.DistillConfig(dataset="cifar10", teacher=str(root / "teacher"), data_dir=str(root / "data"),
                                steps=args.steps, batch_size=args.batch_size, warm_start_steps=1,
                                distance="l2", evaluate=False)
    start = time.perf_counter()
    distill.train_distill(root / "out", cfg, device=args.device)
    per_step = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"teacher/student UNet {params:.1f}M parameters, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"warm-start step: {per_step[0]:.2f} s; distillation steps: "
          + ", ".join(f"{s:.2f}" for s in per_step[1:])
          + f" s; mean {sum(per_step[1:]) / max(1, len(per_step) - 1):.2f} s/step")


if __name__ == "__main__":
    main()
