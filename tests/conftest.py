import os
import sys
from pathlib import Path

import pytest
import torch

# Tests never reach a model hub: a hub id must fail fast and clearly, as on an offline machine.
os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(min(2, torch.get_num_threads()))

BENCH = [sys.executable, "-m", "benchbench.cli"]


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory) -> Path:
    """A small random DDPM in DDPMPipeline's save_pretrained layout (fixed seed), for formula tests."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    path = tmp_path_factory.mktemp("tiny-ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path
