"""Dataset registry. Every dataset yields images in [0, 1], shape (N, C, H, W), with integer labels.

A dataset is a loader ``loader(split) -> ImageDataset`` (split ``train``, ``val`` or ``test``) registered
under a name with :func:`register_dataset` or through the entry-point group ``benchbench.datasets``
(``pip install`` a package declaring one; no edit of benchbench). A loader may also declare the keyword
parameters ``data_dir`` (where its files live: ``--data-dir``), ``download`` (fetch when asked to and
online) and ``arg`` (what follows the first ``:`` of the dataset name, as in ``imagefolder:PATH``); the
harness passes only those a loader declares.

Built in:

* ``digits``, the embedded default: scikit-learn's copy of the UCI optical handwritten digits (1,797 real
  8×8 grey images, 16 grey levels, 10 classes), shipped inside scikit-learn so it needs no download. Its
  split is fixed: ``numpy.random.RandomState(0).permutation(1797)``; of the first 1,347 indices (the
  former training set) the first 1,147 are ``train`` and the last 200 are ``val``; the last 450 are ``test``
  (the legacy RandomState stream is stable across numpy versions). Every model is trained on ``train``;
  every acceptance check, hyper-parameter and stopping choice is made on ``val``; only ``bench run`` reads
  ``test``.
* ``cifar10``: the python-pickle batches (``cifar-10-batches-py/``), read with a restricted unpickler.
* ``imagenet64``: the downsampled ImageNet 64×64 validation set (``Imagenet64_val_npz``).
* ``imagenet[:size=N][:resize=M]``: the full-resolution ILSVRC2012 validation set (torchvision's
  ``ImageNet`` layout or a class-folder tree), shorter side resized to M then centre-cropped to N×N,
  decoded lazily.
* ``imagefolder:PATH[:size=N][:crop=center[:resize=M]]``: one sub-folder per class, images resized to N×N
  (or, with ``crop=center``, shorter side to M, default N, then centre-cropped to N×N).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchbench.errors import BenchError, InvalidArgument
from benchbench.registry import Registry

SPLITS = ("train", "val", "test")
DATA_DIR_ENV = "BENCH_DATA_DIR"


class LazyImages:
    """N images of shape (C, H, W) decoded only when indexed, for sets too large to hold decoded (ImageNet's
    50,000 full-resolution JPEGs are about 40 GB as float32 at 256 px).

    It indexes like the (N, C, H, W) tensor it stands for: ``images[i]`` is one float32 (C, H, W) image in
    [0, 1]; a slice, a list or an integer tensor of indices gives (B, C, H, W); ``shape`` and ``len`` decode
    nothing. ``decode(i)`` returns image i; an image of another shape is an error naming it.
    """

    def __init__(self, count: int, image_shape: tuple[int, int, int], decode: Callable[[int], torch.Tensor]):
        self._count, self._image_shape, self._decode = count, tuple(image_shape), decode

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._count, *self._image_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __len__(self) -> int:
        return self._count

    def _one(self, i: int) -> torch.Tensor:
        if not -self._count <= i < self._count:
            raise IndexError(f"image index {i} is out of range for {self._count} images")
        x = self._decode(i % self._count)
        if tuple(x.shape) != self._image_shape:
            raise BenchError(f"image {i % self._count} decodes to shape {tuple(x.shape)}, not {self._image_shape}")
        return x.to(torch.float32)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, torch.Tensor) and key.dim() == 0:
            key = int(key)
        if isinstance(key, (int, np.integer)):
            return self._one(int(key))
        indices = range(self._count)[key] if isinstance(key, slice) else [int(k) for k in key]
        if len(indices) == 0:
            return torch.empty((0, *self._image_shape))
        return torch.stack([self._one(i) for i in indices])


@dataclass(frozen=True)
class ImageDataset:
    """images: float32 (N, C, H, W) in [0, 1], as a tensor or as :class:`LazyImages` (which indexes like
    one and decodes only what is read); labels: int64 (N,). ``meta``: provenance recorded in the run's
    config.json (e.g. whether the files are the official release).

    Runs, quality and plots only index ``images`` (an image, a slice, a list of indices), so a lazy set
    certifies only the images selected. Training reads whole tensors; only sets with train/val splits
    (digits, CIFAR-10, image folders) are trained on, and their loaders give tensors.
    """

    name: str
    split: str
    images: torch.Tensor | LazyImages
    labels: torch.Tensor
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def content_hash(self, indices: list[int]) -> str:
        """``sha256:…`` over the images and labels at ``indices`` (shape, float32 pixels, int64 labels, all
        little-endian): the same on every machine for the same data, different for any other pixel or
        label. Recorded in a run's experiment, so rows certified on other data are never mixed in."""
        digest = hashlib.sha256()
        digest.update(repr((len(indices), *self.images.shape[1:])).encode())
        # a block at a time: lazy ImageNet at --skip 1 would not fit in memory decoded all at once
        for start in range(0, len(indices), 256):
            block = self.images[indices[start:start + 256]]
            digest.update(block.detach().cpu().contiguous().to(torch.float32).numpy().astype("<f4").tobytes())
        digest.update(self.labels[indices].detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes())
        return "sha256:" + digest.hexdigest()


Loader = Callable[..., ImageDataset]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its loader and the models benchbench uses for it unless told otherwise."""

    name: str
    loader: Loader
    default_classifier: str | None
    default_ddpm: str | None
    default_consistency: str | None = None


DATASETS: Registry[Loader] = Registry("dataset", "benchbench.datasets")


def register_dataset(
    name: str, *, default_classifier: str | None = None, default_ddpm: str | None = None,
    default_consistency: str | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(split) -> ImageDataset`` under ``name``, with the model references
    (see :mod:`benchbench.models.store`) used by default on it."""

    def decorate(loader: Loader) -> Loader:
        loader.bench_defaults = dict(default_classifier=default_classifier,  # type: ignore[attr-defined]
                                     default_ddpm=default_ddpm, default_consistency=default_consistency)
        return DATASETS.register(name)(loader)

    return decorate


def available_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``imagefolder:PATH`` → (``imagefolder``, ``PATH``); ``cifar10`` → (``cifar10``, None)."""
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def dataset_info(spec: str) -> DatasetInfo:
    """The registered dataset named by ``spec`` (``name`` or ``name:arg``); UnknownName when none is."""
    name, arg = split_spec(spec)
    loader = DATASETS.get(name)
    if arg is not None and "arg" not in inspect.signature(loader).parameters:
        raise InvalidArgument(f"dataset {name!r} takes no ':' argument (got {spec!r})")
    defaults = getattr(loader, "bench_defaults", {})
    return DatasetInfo(spec, loader, defaults.get("default_classifier"), defaults.get("default_ddpm"),
                       defaults.get("default_consistency"))


def default_data_dir() -> str:
    """``$BENCH_DATA_DIR``, else ``./data``."""
    return os.environ.get(DATA_DIR_ENV, "data")


def get_dataset(spec: str, split: str, *, data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load split ``split`` of dataset ``spec``; ``data_dir`` defaults to :func:`default_data_dir`."""
    if split not in SPLITS:
        raise InvalidArgument(f"unknown split {split!r} (available: {', '.join(SPLITS)})")
    info = dataset_info(spec)
    _, arg = split_spec(spec)
    accepted = inspect.signature(info.loader).parameters
    if arg is None and "arg" in accepted and accepted["arg"].default is inspect.Parameter.empty:
        raise InvalidArgument(f"dataset {spec!r} needs an argument: {spec}:...")
    options = {"data_dir": str(data_dir or default_data_dir()), "download": download, "arg": arg}
    kwargs = {k: v for k, v in options.items() if k in accepted and not (k == "arg" and v is None)}
    dataset = info.loader(split, **kwargs)
    if not isinstance(dataset, ImageDataset):
        raise BenchError(f"dataset {spec!r}: its loader returned {type(dataset).__name__}, not an ImageDataset")
    return dataset
