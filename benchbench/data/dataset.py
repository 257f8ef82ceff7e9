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
* ``imagefolder:PATH[:size=N]``: one sub-folder per class, images resized to N×N.
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
from benchbench.plugins import Registry

SPLITS = ("train", "val", "test")
DATA_DIR_ENV = "BENCH_DATA_DIR"


@dataclass(frozen=True)
class ImageDataset:
    """images: float32 (N, C, H, W) in [0, 1]; labels: int64 (N,). ``meta``: provenance recorded in the
    run's config.json (e.g. whether the files are the official release)."""

    name: str
    split: str
    images: torch.Tensor
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
        images = self.images[indices].detach().cpu().contiguous().to(torch.float32).numpy().astype("<f4")
        labels = self.labels[indices].detach().cpu().to(torch.int64).numpy().astype("<i8")
        digest.update(repr(tuple(images.shape)).encode())
        digest.update(images.tobytes())
        digest.update(labels.tobytes())
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


DIGITS_TRAIN_SIZE = 1347  # train + val: the test set is the remaining 450
DIGITS_VAL_SIZE = 200      # the last 200 of those 1,347 indices


@register_dataset("digits", default_classifier="digits", default_ddpm="digits", default_consistency="digits")
def load_digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    cut = DIGITS_TRAIN_SIZE - DIGITS_VAL_SIZE
    idx = {"train": order[:cut], "val": order[cut:DIGITS_TRAIN_SIZE], "test": order[DIGITS_TRAIN_SIZE:]}[split]
    images = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return ImageDataset("digits", split, images, labels, 10)
