"""Network definitions and the one way benchbench loads a model (:mod:`benchbench.models.store`)."""
