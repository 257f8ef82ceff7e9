"""Dataset registry. Every dataset yields images in [0, 1], shape (N, C, H, W), with integer labels.

The embedded default is ``digits``: scikit-learn's copy of the UCI optical handwritten digits (1,797 real
8×8 grey images, 16 grey levels, 10 classes), shipped inside scikit-learn so it needs no download.
Its split is fixed: ``numpy.random.RandomState(0).permutation(1797)``; of the first 1,347 indices (the
former training set) the first 1,147 are ``train`` and the last 200 are ``val``; the last 450 are ``test``
(the legacy RandomState stream is stable across numpy versions). Every model is trained on ``train``; every
acceptance check, hyper-parameter and stopping choice is made on ``val``; only ``bench run`` reads ``test``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from benchbench.errors import InvalidArgument, UnknownName

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageDataset:
    """images: float32 (N, C, H, W) in [0, 1]; labels: int64 (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its loader and the models benchbench uses for it unless told otherwise."""

    name: str
    loader: Callable[[str], ImageDataset]
    default_classifier: str | None
    default_ddpm: str | None


_datasets: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, *, default_classifier: str | None = None, default_ddpm: str | None = None
) -> Callable[[Callable[[str], ImageDataset]], Callable[[str], ImageDataset]]:
    """Decorator registering ``loader(split) -> ImageDataset`` under ``name``, with the model references
    (see :mod:`benchbench.models.store`) used by default on it."""

    def decorate(loader: Callable[[str], ImageDataset]) -> Callable[[str], ImageDataset]:
        _datasets[name] = DatasetInfo(name, loader, default_classifier, default_ddpm)
        return loader

    return decorate


def available_datasets() -> list[str]:
    return sorted(_datasets)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _datasets:
        close = difflib.get_close_matches(name, _datasets, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownName(f"unknown dataset {name!r}{hint} (available: {', '.join(available_datasets())})")
    return _datasets[name]


def get_dataset(name: str, split: str) -> ImageDataset:
    if split not in SPLITS:
        raise InvalidArgument(f"unknown split {split!r} (available: {', '.join(SPLITS)})")
    return dataset_info(name).loader(split)


DIGITS_TRAIN_SIZE = 1347  # train + val: the test set is the remaining 450
DIGITS_VAL_SIZE = 200      # the last 200 of those 1,347 indices


@register_dataset("digits", default_classifier="digits", default_ddpm="digits")
def load_digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    cut = DIGITS_TRAIN_SIZE - DIGITS_VAL_SIZE
    idx = {"train": order[:cut], "val": order[cut:DIGITS_TRAIN_SIZE], "test": order[DIGITS_TRAIN_SIZE:]}[split]
    images = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return ImageDataset("digits", split, images, labels, 10)
