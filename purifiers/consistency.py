"""Consistency purification (Li et al., NeurIPS 2024) with consistency models (Song et al. 2023)."""

from __future__ import annotations

import torch

from benchbench.models.consistency import load_consistency, multistep_levels, purify
from benchbench.models.store import fingerprint, read_manifest
from benchbench.seeding import CopyNoise


class ConsistencyBase:
    """Loads a consistency model of ``kind`` (embedded name, ``ConsistencyModelPipeline`` folder or hub id;
    the dataset's embedded model when ``model`` is None) and purifies in ``steps`` network calls."""

    kind = "consistency"

    def __init__(self, model: str | None = None, device: str = "cpu", dataset: str = "digits", steps: int = 1):
        self.model_ref = model or dataset
        self.device = torch.device(device)
        self.model = load_consistency(self.model_ref, self.device, self.kind)
        multistep_levels(self.model.sigmas, 0, steps)  # refuse an impossible step count now, not mid-run
        self.steps = steps
        self.networks = (self.model.unet,)
        self.fingerprint = self._fingerprint()  # recorded in config.json

    def _fingerprint(self) -> str:
        """The weights' hash, plus the distances it was trained with (from its manifest, when it has one)."""
        text = fingerprint(self.model_ref, self.kind)
        cfg = (read_manifest(self.model_ref, self.kind) or {}).get("training_config", {})
        for key in ("distance", "distill_distance"):
            if cfg.get(key):
                text += f";{key}={cfg[key]}"
        return text

    stochastic = True  # the top-up and multistep noise come from the batch's CopyNoise

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: CopyNoise) -> torch.Tensor:
        return purify(self.model, x_noisy, sigma, noise, self.steps)


class ConsistencyPurifier(ConsistencyBase):
    """Consistency purification: one consistency-model call from 2σ (topped up to the next grid level).

    x_noisy = x + δ in [0, 1] is 2·x_noisy − 1 = x₀ + 2σ·ε in the model's [-1, 1] scale: VE noise level 2σ.
    When 2σ is not a level σ_k of the model's training grid, independent noise √(σ_k² − 4σ²)·ε' from the
    purifier's per-copy noise first raises it to the next level σ_k ≥ 2σ, so the model sees exactly the noise
    level it was trained on; the purifier is then a randomised function of x + δ alone, which keeps the
    smoothing certificate valid. One network call gives f(x, σ_k), clipped to [-1, 1] and mapped to [0, 1].
    With ``steps`` > 1, multistep consistency sampling: re-noise the estimate to smaller grid levels and
    apply f again (``steps`` network calls). Default model: the embedded distilled ``digits`` model.
    """

    kind = "consistency"


class ConsistencyFTPurifier(ConsistencyBase):
    """Consistency purification with the LPIPS fine-tuned model (Li et al. 2024): one call from 2σ.

    Same procedure as :class:`ConsistencyPurifier` (top-up to the next grid level σ_k ≥ 2σ with the
    purifier's per-copy noise, f(x, σ_k), clip, map to [0, 1]; ``steps`` > 1 for multistep), with a model
    fine-tuned to minimise the LPIPS-style distance between purified and clean images at σ ∈ {0.25, 0.5, 1}.
    Default model: the embedded ``digits`` model of kind ``consistency-ft``.
    """

    kind = "consistency-ft"
