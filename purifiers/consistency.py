"""Consistency purification (Li et al., NeurIPS 2024) with consistency models (Song et al. 2023)."""

from __future__ import annotations

import warnings

import torch

from benchbench.data.dataset import dataset_info
from benchbench.errors import InvalidArgument
from benchbench.models.consistency import assumed_level, load_consistency, multistep_levels, purify
from benchbench.models.store import embedded_path, fingerprint, read_manifest
from benchbench.smoothing.noise import CopyNoise
from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE, NEAREST_RULES, check_sigma_mode

CLASS_LABEL_POLICIES = ("auto", "none", "predicted")

# Tolerated mismatch between the noise level the model is given or assumes and the true 2σ.
TOPUP_WARN = 0.10    # a top-up adding more than 10% noise warns
NEAREST_WARN = 0.15  # a nearest grid level more than 15% away warns


class ConsistencyBase:
    """Loads a consistency model of ``kind`` (embedded name, ``ConsistencyModelPipeline`` folder or hub id;
    when ``model`` is None, the dataset's embedded model or its default hub model) and purifies in ``steps``
    network calls, calling the model at 2σ as ``sigma_mode`` says
    (:func:`benchbench.models.consistency.first_call`).

    ``class_label`` is what a class-conditional UNet (``num_class_embeds`` in its config, e.g.
    ``openai/diffusers-cd_imagenet64_lpips``) is told: ``none`` (unconditional models only) or
    ``predicted``: the base classifier's label of the same noisy input x + δ, one classifier call per noisy
    sample before purifying; ``auto`` (the default) is ``predicted`` for a class-conditional model and
    ``none`` otherwise. The policy in effect is part of the fingerprint recorded in config.json. The
    certificate stays valid: the label is a function of x + δ alone (the classifier is fixed), so the
    purifier stays a (randomised) function of x + δ, which is all randomized smoothing asks of the base
    classifier; the clean label is never used. Those classifier calls add to the measured time, not to NFE
    (which counts the diffusion network).
    """

    kind = "consistency"

    def __init__(self, steps: int = 1, sigma_mode: str = DEFAULT_SIGMA_MODE, model: str | None = None,
                 class_label: str = "auto", device: str = "cpu", dataset: str = "digits",
                 classifier: torch.nn.Module | None = None):
        self.model_ref = model or self._default_model(dataset)
        self.sigma_mode = check_sigma_mode(sigma_mode)
        # Only the top-up and multistep sampling draw noise; nearest/exact one-step purification is deterministic.
        self.stochastic = sigma_mode == "topup" or steps > 1
        self.device = torch.device(device)
        self.model = load_consistency(self.model_ref, self.device, self.kind)
        multistep_levels(self.model.sigmas, 0, steps)  # refuse an impossible step count now, not mid-run
        self.steps = steps
        self._checked: set[float] = set()
        self.networks = (self.model.unet,)
        config = self.model.unet.config
        size = config.sample_size
        self.image_shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))
        self.class_label, self.classifier = self._class_policy(class_label, classifier, config)
        self.fingerprint = self._fingerprint()  # recorded in config.json

    def _default_model(self, dataset: str) -> str:
        if embedded_path(dataset, self.kind).is_dir():
            return dataset
        default = dataset_info(dataset).default_consistency if self.kind == "consistency" else None
        if default is None:
            raise InvalidArgument(f"no default {self.kind} model for dataset {dataset!r}: pass "
                                  f"{self.kind}:model=FOLDER_OR_HUB_ID")
        return default

    def _class_policy(self, policy: str, classifier: torch.nn.Module | None, config: object) -> tuple[str, object]:
        """Check ``class_label`` against the model; ``num_classes`` is set for a class-conditional model
        (the harness checks it against the dataset's)."""
        if policy not in CLASS_LABEL_POLICIES:
            raise InvalidArgument(f"class_label={policy!r}: expected one of {', '.join(CLASS_LABEL_POLICIES)}")
        classes = getattr(config, "num_class_embeds", None)
        if policy == "auto":
            policy = "predicted" if classes else "none"
        if classes and policy == "none":
            raise InvalidArgument(f"consistency model {self.model_ref!r} is class-conditional ({classes} classes): "
                                  f"pass class_label=predicted")
        if not classes and policy != "none":
            raise InvalidArgument(f"class_label={policy} needs a class-conditional model; {self.model_ref!r} "
                                  f"has no num_class_embeds")
        if policy == "predicted" and classifier is None:
            raise InvalidArgument("class_label=predicted needs the base classifier (the harness passes it)")
        if classes:
            self.num_classes = int(classes)
        return policy, (classifier if policy == "predicted" else None)

    def _fingerprint(self) -> str:
        """The weights' hash, plus the distances it was trained with (from its manifest, when it has one)."""
        text = fingerprint(self.model_ref, self.kind)
        if self.class_label != "none":
            text += f";class_label={self.class_label}"
        cfg = (read_manifest(self.model_ref, self.kind) or {}).get("training_config", {})
        for key in ("distance", "distill_distance", "feature_network_fingerprint"):
            if cfg.get(key):
                text += f";{key}={cfg[key]}"
        return text

    def noise_mismatch(self, sigma: float) -> float:
        """Relative gap between the level the model is given or assumes and the true 2σ (0 for ``exact``)."""
        return assumed_level(self.model.sigmas, sigma, self.sigma_mode) / (2 * sigma) - 1

    def _warn_once(self, sigma: float) -> None:
        if sigma in self._checked or 2 * sigma <= self.model.sigma_min:
            return
        self._checked.add(sigma)
        gap = self.noise_mismatch(sigma)
        if self.sigma_mode == "topup" and gap > TOPUP_WARN:
            warnings.warn(f"{self.kind}: at σ={sigma:g} the top-up to the grid inflates the noise by "
                          f"{100 * gap:.0f}% (2σ={2 * sigma:g} → {2 * sigma * (1 + gap):.3g}); "
                          f"sigma_mode=exact evaluates the model at 2σ itself", stacklevel=3)
        elif self.sigma_mode in NEAREST_RULES and abs(gap) > NEAREST_WARN:
            warnings.warn(f"{self.kind}: at σ={sigma:g} the nearest grid level is {100 * gap:+.0f}% from 2σ; "
                          f"sigma_mode=exact evaluates the model at 2σ itself", stacklevel=3)

    @torch.no_grad()
    def __call__(self, x_noisy: torch.Tensor, sigma: float, noise: CopyNoise | None = None) -> torch.Tensor:
        if 2 * sigma > self.model.sigma_max * (1 + 1e-9):  # beyond every level it was trained on, in any mode
            raise InvalidArgument(f"σ={sigma:g} needs noise level 2σ={2 * sigma:g}, above this {self.kind} "
                                  f"model's σ_max={self.model.sigma_max:g}")
        self._warn_once(sigma)
        labels = self.classifier(x_noisy).argmax(1) if self.classifier is not None else None
        return purify(self.model, x_noisy, sigma, noise, self.steps, labels, mode=self.sigma_mode)


class ConsistencyPurifier(ConsistencyBase):
    """Consistency purification: one consistency-model call at noise level 2σ (`sigma_mode`, below).

    x_noisy = x + δ in [0, 1] is 2·x_noisy − 1 = x₀ + 2σ·ε in the model's [-1, 1] scale: VE noise level 2σ.
    ``sigma_mode`` ``nearest`` (default; Li et al.'s rule) calls f at the grid level nearest to 2σ,
    argmin_k |σ_k − 2σ|, and warns when that level is more than 15% away; ``nearest-log`` takes the level
    nearest in ratio instead; ``exact`` calls f(x, 2σ) (c_skip, c_out, t(σ) are continuous);
    all three are deterministic; ``topup`` first adds independent noise
    √(σ_k² − 4σ²)·ε' from the purifier's per-copy noise to reach the next grid level σ_k ≥ 2σ (a randomised
    function of x + δ alone, so the certificate stays valid) and warns when that inflates the noise by more
    than 10%. The output is clipped to [-1, 1] and mapped to [0, 1]. With ``steps`` > 1, multistep
    consistency sampling on the grid levels below (``steps`` network calls). Default model: the embedded
    distilled ``digits`` model.
    """

    kind = "consistency"


class ConsistencyFTPurifier(ConsistencyBase):
    """Consistency purification with the LPIPS fine-tuned model (Li et al. 2024): one call from 2σ.

    Same procedure and ``sigma_mode`` as :class:`ConsistencyPurifier`, with a model fine-tuned with Li et
    al.'s objective (the LPIPS-style distance between purified and clean ``train`` images at σ ∈ {0.25,
    0.5, 1}, no anchor term). Default model: the embedded ``digits`` model of kind ``consistency-ft``.
    """

    kind = "consistency-ft"
