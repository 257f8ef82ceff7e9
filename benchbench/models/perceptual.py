"""Image distances for consistency distillation, fine-tuning and evaluation.

Every distance takes two batches in [-1, 1], shape (B, C, H, W), and returns a (B,) tensor, differentiable
in both arguments:

* ``vgg`` / ``alex``: LPIPS (Zhang et al. 2018) from the ``lpips`` package, with its learned layer weights.
  It needs torchvision's ImageNet backbone in the torch hub cache (``$TORCH_HOME/hub/checkpoints``); when the
  file is missing this raises :class:`~benchbench.errors.CheckpointError` and never downloads. Grey images
  are repeated to 3 channels, and images under 32 px are upsampled to 32 px (bilinear), below which the
  backbones' pooling stages run out of pixels.
* ``digits-ssl``: LPIPS's formula without learned weights (unit-normalise each layer's features over
  channels, squared difference summed over channels, spatial average, sum over layers) on the four
  convolution stages of the embedded digits *perceptual network*
  (:class:`benchbench.models.feature_net.FeatureNet`): trained without labels (SimCLR) on the ``train``
  split, with an architecture and seed of its own, so it is independent of the certified classifier, as
  Li et al.'s VGG is of their ViT. ImageNet backbones see too few pixels on 8×8 digits. This is the
  default perceptual distance on ``digits``.
* ``digits-cnn``: the same formula on the convolution stages of the embedded digits *classifier*, the one
  ``bench run`` certifies. Kept for comparison only: a purifier trained with it is trained toward the
  classifier it is certified with.
* ``l2``: mean squared difference per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchbench.errors import CheckpointError, UnknownName

DISTANCES = ("digits-ssl", "digits-cnn", "vgg", "alex", "l2")
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_perceptual(dataset: str) -> str:
    """The LPIPS-style distance used for ``dataset`` when a config says ``lpips``."""
    return "digits-ssl" if dataset == "digits" else "vgg"


def resolve_distance(name: str, dataset: str) -> str:
    """``lpips`` → the dataset's perceptual default; any other name is checked and returned."""
    name = default_perceptual(dataset) if name == "lpips" else name
    if name not in DISTANCES:
        raise UnknownName(f"unknown distance {name!r} (available: lpips, {', '.join(DISTANCES)})")
    return name


def distance_record(name: str) -> dict[str, str]:
    """What a manifest or config.json records about distance ``name``: the name, and for the digits
    distances which network the features come from (with its content hash)."""
    from benchbench.models.store import fingerprint

    record = {"distance": name}
    if name == "digits-ssl":
        record.update(feature_network="digits perceptual FeatureNet (SimCLR, no labels, train split; "
                                      "not the certified classifier)",
                      feature_network_fingerprint=fingerprint("digits", "perceptual"))
    elif name == "digits-cnn":
        record.update(feature_network="digits classifier (the certified classifier itself)",
                      feature_network_fingerprint=fingerprint("digits", "classifier"))
    return record


def backbone_file(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights LPIPS ``net`` (``vgg`` or ``alex``) builds on."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    url = {"vgg": VGG16_Weights.IMAGENET1K_V1.url, "alex": AlexNet_Weights.IMAGENET1K_V1.url}[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


class L2Distance(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).flatten(1).mean(1)


class ClassifierLPIPS(nn.Module):
    """LPIPS's formula over the ReLU outputs of a classifier's convolution stages (frozen).

    ``body``: the classifier's feature stack taking images in [-1, 1] (SmallCNN.body). The flattening and
    linear layers are left out: LPIPS compares spatial feature maps, and the penultimate features are the
    ones the Fréchet distance is measured in.
    """

    def __init__(self, body: nn.Sequential):
        super().__init__()
        convs = [i for i, m in enumerate(body) if isinstance(m, nn.Conv2d)]
        self.body = body[: convs[-1] + 2]  # up to and including the last conv's ReLU
        self.taps = {i + 1 for i in convs}
        self.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from lpips import normalize_tensor, spatial_average

        total = a.new_zeros(len(a))
        for i, layer in enumerate(self.body):
            a, b = layer(a), layer(b)
            if i in self.taps:
                diff = (normalize_tensor(a) - normalize_tensor(b)) ** 2
                total = total + spatial_average(diff.sum(1, keepdim=True)).flatten()
        return total


class FeatureNetLPIPS(nn.Module):
    """LPIPS's formula over the stages of a frozen :class:`~benchbench.models.feature_net.FeatureNet`
    (inputs in [-1, 1], as the network takes them)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from lpips import normalize_tensor, spatial_average

        total = a.new_zeros(len(a))
        for fa, fb in zip(self.net.stages(a), self.net.stages(b)):
            diff = (normalize_tensor(fa) - normalize_tensor(fb)) ** 2
            total = total + spatial_average(diff.sum(1, keepdim=True)).flatten()
        return total


class TorchvisionLPIPS(nn.Module):
    """``lpips.LPIPS(net)`` for images of any channel count and size (see the module docstring)."""

    def __init__(self, net: str):
        super().__init__()
        import lpips

        self.lpips = lpips.LPIPS(net=net, verbose=False).requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        if min(a.shape[-2:]) < 32:
            size = [max(32, s) for s in a.shape[-2:]]
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return self.lpips(a, b).flatten()


def get_distance(name: str, device: str | torch.device = "cpu") -> Distance:
    """The distance ``name`` (one of :data:`DISTANCES`) as a frozen module on ``device``:
    ``d(a, b) -> (B,)`` for a, b in [-1, 1]."""
    if name == "l2":
        return L2Distance()
    if name == "digits-ssl":
        from benchbench.models.store import load_feature_net

        return FeatureNetLPIPS(load_feature_net("digits", device)).to(device)
    if name == "digits-cnn":
        from benchbench.models.store import load_smallcnn

        return ClassifierLPIPS(load_smallcnn("digits", device).body).to(device)
    if name in ("vgg", "alex"):
        path = backbone_file(name)
        if not path.is_file():  # lpips would otherwise try to download it (URLError offline)
            raise CheckpointError(
                f"LPIPS '{name}' needs torchvision's ImageNet weights at {path}: copy that file there from a "
                f"machine with network (torchvision downloads it on first use), or use distance 'digits-cnn' or 'l2'"
            )
        return TorchvisionLPIPS(name).to(device)
    raise UnknownName(f"unknown distance {name!r} (available: {', '.join(DISTANCES)})")
