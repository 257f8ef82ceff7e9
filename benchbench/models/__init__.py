"""Networks and the one way benchbench loads a model (:mod:`benchbench.models.store`): classifiers, DDPMs,
consistency models, perceptual networks, and the σ-mode rules of consistency purification.

May import smoothing (noise streams), data, registry and errors; never purifiers, results, run or train.
Checkpoints of other codebases come in through :mod:`benchbench.models.openai_unet` (``bench convert``).
"""
