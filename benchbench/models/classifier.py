"""The embedded default classifier: a small CNN for 8×8 grey digits, in diffusers' model format.

It subclasses diffusers' ``ModelMixin``/``ConfigMixin`` so that it saves and loads exactly like the
diffusion models (``config.json`` + ``diffusion_pytorch_model.safetensors``): one loading mechanism.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class SmallCNN(ModelMixin, ConfigMixin):
    """Input: images in [0, 1], shape (B, in_channels, image_size, image_size). Output: logits (B, classes)."""

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 8,
                 feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (image_size // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape (B, feature_dim)."""
        return self.body((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))
