"""The embedded default dataset: scikit-learn's copy of the UCI optical handwritten digits (1,797 real 8×8
grey images, 16 grey levels, 10 classes), shipped inside scikit-learn so it needs no download. The fixed
train / val / test split is described in :mod:`benchbench.data.dataset`."""

from __future__ import annotations

import numpy as np
import torch

from benchbench.data.dataset import ImageDataset, register_dataset

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
