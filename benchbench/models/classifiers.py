"""Base classifiers: a registry of builders, one per reference form, each returning a module that takes
images in [0, 1] at the dataset's resolution and returns logits.

Reference forms (the part before the first ``:`` picks the builder; anything else is a SmallCNN folder,
embedded name or hub id, as before):

==========================  =====================================================================
``digits``, ``./folder``    benchbench's SmallCNN (``save_pretrained`` folder, or embedded name)
``hf:ID_OR_PATH``           a transformers image classifier (``AutoModelForImageClassification``)
``timm:NAME[:CKPT]``        a timm model: pretrained ``NAME``, ``local-dir:PATH``, or weights CKPT
``robustbench:NAME[:TM]``   a RobustBench model zoo entry (threat model TM, default Linf)
``torchscript:PATH``        a TorchScript module taking [0, 1] images at the dataset's resolution
==========================  =====================================================================

Resizing to the model's input size and its normalisation happen inside :class:`PixelClassifier`, so the
harness always adds noise in [0, 1] pixel space (the point of Cohen et al.'s ``NormalizeLayer``). Third
parties add a form with the entry-point group ``benchbench.classifiers``: a builder
``build(arg: str, *, device, dataset) -> torch.nn.Module``.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchbench.errors import BenchError, CheckpointError, InvalidArgument, first_line
from benchbench.models.store import file_sha256, fingerprint, hub_call, load_smallcnn
from benchbench.registry import Registry

Builder = Callable[..., nn.Module]
CLASSIFIERS: Registry[Builder] = Registry("classifier", "benchbench.classifiers")

EXTRAS = {"transformers": "hf", "timm": "timm", "robustbench": "robustbench"}


def require(module: str) -> Any:
    """Import an optional dependency, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise BenchError(f"{module} is not installed: pip install 'benchbench[{extra}]'") from None


class PixelClassifier(nn.Module):
    """Wraps a network so that it takes images in [0, 1], shape (B, C, H, W), at any resolution.

    forward: repeat grey images to 3 channels when the network wants 3; resize to ``size`` (H, W) when
    given and different (bilinear, antialiased when shrinking); subtract ``mean`` and divide by ``std``
    per channel; call the network; return its logits (a ``.logits`` attribute or the first element of a
    tuple are unpacked). ``fingerprint`` and ``ref`` are recorded in the run's config.
    """

    def __init__(self, net: nn.Module, *, size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, channels: int | None = None, ref: str = "",
                 fingerprint: str | None = None, interpolation: str = "bilinear"):
        super().__init__()
        self.net = net
        self.size = tuple(int(s) for s in size) if size else None
        self.channels = channels
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1), persistent=False)
        self.ref = ref
        self.fingerprint = fingerprint

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → what the network was trained on."""
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            shrink = self.size[0] < x.shape[-2]
            x = F.interpolate(x, size=self.size, mode=self.interpolation, align_corners=False,
                              antialias=shrink and self.interpolation in ("bilinear", "bicubic"))
        return (x - self.mean.to(x)) / self.std.to(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.preprocess(x))
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


def split_ref(ref: str) -> tuple[str | None, str]:
    """``hf:google/vit`` → (``hf``, ``google/vit``); a reference whose prefix is no registered form →
    (None, ref)."""
    prefix, sep, rest = ref.partition(":")
    if sep and prefix in CLASSIFIERS:
        return prefix, rest
    return None, ref


def load_classifier(ref: str, device: str | torch.device = "cpu", dataset: str = "digits") -> nn.Module:
    """Load a classifier (images in [0, 1] at the dataset's resolution → logits) in eval mode on ``device``;
    ``ref`` is any form of the module docstring. Its ``fingerprint`` attribute identifies the weights
    (recorded in config.json)."""
    prefix, arg = split_ref(ref)
    if prefix is None:
        net = load_smallcnn(ref, device)
        net.fingerprint = fingerprint(ref, "classifier")
        net.ref = ref
        return net
    if not arg:
        raise InvalidArgument(f"classifier reference {ref!r} names no model after '{prefix}:'")
    model = CLASSIFIERS.get(prefix)(arg, device=str(device), dataset=dataset)
    if getattr(model, "fingerprint", None) is None:
        model.fingerprint = f"{prefix}:{arg}"
    model.ref = ref
    return model.to(device).eval()


@CLASSIFIERS.register("hf")
def hf_classifier(arg: str, *, device: str = "cpu", dataset: str = "digits") -> nn.Module:
    """A transformers image classifier (hub id, ``ID@REVISION``, or ``save_pretrained`` folder) with the
    size and normalisation of its image processor (``preprocessor_config.json``)."""

    transformers = require("transformers")
    net = hub_call(transformers.AutoModelForImageClassification.from_pretrained, arg, "classifier")
    processor = hub_call(transformers.AutoImageProcessor.from_pretrained, arg, "classifier")
    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    if getattr(processor, "do_center_crop", False) and "height" in crop:
        # The network's input is the crop; a square image goes straight to it (no resize-then-crop margin).
        size = crop
    if "height" in size:
        hw = (size["height"], size["width"])
    elif "shortest_edge" in size:
        hw = (size["shortest_edge"],) * 2
    else:
        side = getattr(net.config, "image_size", None)
        hw = (side, side) if side else None
    normalise = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalise else None
    std = list(processor.image_std) if normalise else None
    resample = getattr(processor, "resample", None)
    mode = "bicubic" if resample is not None and int(resample) == 3 else "bilinear"  # PIL.Image.BICUBIC == 3
    return PixelClassifier(net, size=hw, mean=mean, std=std, channels=getattr(net.config, "num_channels", 3),
                           fingerprint=fingerprint(arg, "classifier"), interpolation=mode)


@CLASSIFIERS.register("timm")
def timm_classifier(arg: str, *, device: str = "cpu", dataset: str = "digits") -> nn.Module:
    """``timm:NAME`` (timm's pretrained weights, fetched by timm), ``timm:local-dir:PATH`` (a folder written
    by timm's ``save_for_hf``/``push_to_hub``: config.json + weights) or ``timm:NAME:CKPT`` (architecture
    NAME with the weights file CKPT); size and normalisation from timm's data config."""
    timm = require("timm")
    if arg.startswith(("local-dir:", "hf-hub:")):
        name, ckpt = arg, None
    else:
        name, _, rest = arg.partition(":")
        ckpt = rest or None
    kwargs: dict[str, Any] = {}
    if ckpt is not None:
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise CheckpointError(f"timm checkpoint {ckpt!r} is not a file")
        kwargs["checkpoint_path"] = str(path)
        fp = "sha256:" + file_sha256(path)
    elif name.startswith("local-dir:"):

        folder = Path(name[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"timm folder {str(folder)!r} is not a directory")
        fp = fingerprint(str(folder), "classifier")
    else:
        fp = f"timm:{name}@{getattr(timm, '__version__', '?')}"
    try:
        if ckpt is None:
            net = timm.create_model(name, pretrained=True)
        else:  # the head's size comes from the weights (a CIFAR-10 checkpoint has 10 outputs)
            state = timm.models.load_state_dict(kwargs["checkpoint_path"])
            head = timm.create_model(name, pretrained=False).pretrained_cfg.get("classifier")
            classes = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else None
            net = timm.create_model(name, pretrained=False, **({"num_classes": classes} if classes else {}))
            net.load_state_dict(state)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise InvalidArgument(f"timm has no model {name!r}") from None
        raise CheckpointError(f"cannot load timm model {arg!r}: {first_line(exc)}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load timm model {arg!r} (no network, or bad weights): "
                              f"{first_line(exc)}") \
            from None
    cfg = timm.data.resolve_data_config({}, model=net)
    channels, height, width = cfg["input_size"]
    mode = cfg.get("interpolation", "bilinear")
    return PixelClassifier(net, size=(height, width), mean=list(cfg["mean"]), std=list(cfg["std"]),
                           channels=channels, fingerprint=fp,
                           interpolation=mode if mode in ("bilinear", "bicubic", "nearest") else "bilinear")


ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet64": "imagenet"}


@CLASSIFIERS.register("robustbench")
def robustbench_classifier(arg: str, *, device: str = "cpu", dataset: str = "digits") -> nn.Module:
    """A RobustBench model zoo entry, through its documented ``robustbench.utils.load_model(model_name,
    model_dir, dataset, threat_model)``. RobustBench models take [0, 1] images and normalise inside, so
    only the resolution is adapted (ImageNet models: 224 px)."""
    utils = require("robustbench.utils")
    name, _, threat = arg.partition(":")
    base = dataset.partition(":")[0]
    if base not in ROBUSTBENCH_DATASETS:
        raise InvalidArgument(f"robustbench has no models for dataset {dataset!r} "
                              f"(available: {', '.join(ROBUSTBENCH_DATASETS)})")
    rb_dataset = ROBUSTBENCH_DATASETS[base]
    model_dir = Path.home() / ".cache" / "benchbench" / "robustbench"
    try:
        net = utils.load_model(model_name=name, model_dir=str(model_dir), dataset=rb_dataset,
                               threat_model=threat or "Linf")
    except Exception as exc:  # robustbench raises ValueError/KeyError for unknown names, OSError/requests offline
        raise CheckpointError(f"cannot load robustbench model {arg!r} for {rb_dataset}: "
                              f"{first_line(exc)}") from None
    size = (224, 224) if rb_dataset == "imagenet" else None
    return PixelClassifier(net, size=size, channels=3, fingerprint=f"robustbench:{rb_dataset}/{threat or 'Linf'}/{name}")


@CLASSIFIERS.register("torchscript")
def torchscript_classifier(arg: str, *, device: str = "cpu", dataset: str = "digits") -> nn.Module:
    """A TorchScript file (``torch.jit.save``) whose module takes images in [0, 1] at the dataset's
    resolution and returns logits: it must resize and normalise inside, since nothing is known about it."""
    path = Path(arg).expanduser()
    if not path.is_file():
        raise CheckpointError(f"torchscript classifier {arg!r} is not a file")
    try:
        with warnings.catch_warnings():  # torch's deprecation notice would add lines to one-line errors
            warnings.simplefilter("ignore")
            net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{arg} is not a TorchScript file: {first_line(exc)}") from None
    return PixelClassifier(net, fingerprint="sha256:" + file_sha256(path))
