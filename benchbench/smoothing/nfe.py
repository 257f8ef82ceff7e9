"""Count network function evaluations (NFE) from the forward calls that actually happen."""

from __future__ import annotations

from typing import Any, Sequence

import torch


class ForwardCounter:
    """Context manager that hooks ``modules`` and counts their forward calls.

    ``calls`` counts forward invocations; ``rows`` adds up the batch size (first dimension of the first
    tensor argument) of each, so ``rows / samples`` is the NFE per noisy sample whatever the batching.
    """

    def __init__(self, modules: Sequence[torch.nn.Module]):
        self.modules = list(modules)
        self.calls = 0
        self.rows = 0
        self._handles: list[Any] = []

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.rows += int(first.shape[0]) if first is not None and first.dim() > 0 else 1

    def __enter__(self) -> "ForwardCounter":
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
