"""The perceptual feature network of the digits LPIPS-style distance: independent of the certified classifier.

A small convolutional encoder trained *without labels* (SimCLR-style contrastive learning, Chen et al. 2020)
on the ``train`` split only, with its own architecture (four 3×3 convolutions, strided instead of max-pooled,
GELU instead of ReLU, other widths) and its own seed. The certified classifier never sees its features and
it never sees a label, so a purifier trained or scored with it is not trained toward the classifier.

It subclasses diffusers' ``ModelMixin``/``ConfigMixin`` like every other benchbench model, so it saves and
loads through the one loader (:func:`benchbench.models.store.load_feature_net`).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class FeatureNet(ModelMixin, ConfigMixin):
    """Input: images in [-1, 1], shape (B, in_channels, image_size, image_size).

    ``stages(x)`` returns the four convolution stages' activations (what the distance compares);
    ``forward(x)`` returns the contrastive projection (B, proj_dim), used only in training.
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (24, 48, 96, 96), image_size: int = 8,
                 proj_dim: int = 64):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1  # 8 → 4 → 2 on digits
            layers.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=stride, padding=1), nn.GELU()))
            c = w
        self.convs = nn.ModuleList(layers)
        side = image_size // 2 ** (len(widths) // 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, 128), nn.GELU(), nn.Linear(128, proj_dim))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for conv in self.convs:
            x = conv(x)
            out.append(x)
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened last-stage features (B, D): what the linear probe on ``val`` reads."""
        return self.stages(x)[-1].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x)[-1])
