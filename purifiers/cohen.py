"""The Cohen et al. (2019) baseline: no purifier, a classifier trained under Gaussian noise at the run's σ."""

from __future__ import annotations

import torch

from benchbench.errors import InvalidArgument
from benchbench.models.store import fingerprint, noise_classifier_ref


class CohenBaseline:
    """Cohen et al. 2019: no purification; the smoothed classifier is one trained under N(0, σ²) noise at each σ.

    The harness certifies the noisy copies with ``classifier_for(σ)`` instead of the run's classifier:
    by default the dataset's shipped classifier trained with ``bench train classifier --noise-sd σ``
    (on digits: σ ∈ {0.25, 0.5, 1.0}); ``model`` = one classifier reference (folder or embedded name) used at
    every σ instead. A σ with no such classifier is refused before anything is certified.
    """

    networks: tuple[torch.nn.Module, ...] = ()
    output_range = None  # the noisy images themselves, unclipped, as Cohen et al. certify them

    def __init__(self, model: str | None = None, device: str = "cpu", dataset: str = "digits"):
        self.model = model
        self.dataset = dataset
        self.fingerprint = "classifier trained under noise at each σ" if model is None else \
            fingerprint(model, "classifier")

    def classifier_for(self, sigma: float) -> str:
        """The classifier reference certified at σ (image scale); InvalidArgument when none exists."""
        if self.model is not None:
            return self.model
        ref = noise_classifier_ref(self.dataset, sigma)
        if ref is None:
            raise InvalidArgument(
                f"cohen: no classifier trained under noise σ={sigma:g} ships for {self.dataset!r}; train one with "
                f"`bench train classifier --noise-sd {sigma:g} --out DIR` and pass cohen:model=DIR")
        return ref

    def __call__(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        return x_noisy  # unclipped, as Cohen et al. certify (and as the classifier was trained)
