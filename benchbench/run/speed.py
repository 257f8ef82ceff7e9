"""Speed options of a run's networks: ``channels_last`` memory format and ``torch.compile``.

Both change only how a network computes, not what: the same weights and inputs, float results equal up to
rounding. They are environment (like the batch size), recorded in ``config.json``'s ``environment.speed``.
"""

from __future__ import annotations

from typing import Iterable

import torch

from benchbench.errors import InvalidArgument, first_line


def apply_speed_options(networks: Iterable[torch.nn.Module], *, channels_last: bool = False,
                        compile: bool = False) -> None:
    """Switch every module of ``networks`` in place to ``channels_last`` weights and/or a compiled forward.

    ``compile`` wraps each module's ``forward`` (not the module) with :func:`torch.compile`: the module's
    ``__call__`` and its forward hooks stay eager, so NFE is still counted from the calls that happen, and
    hooks added later (one :class:`benchbench.smoothing.nfe.ForwardCounter` per task) never trigger a
    recompilation. A module is switched once however often it is listed (a classifier shared by purifiers).
    """
    seen: set[int] = set()
    for net in networks:
        if not isinstance(net, torch.nn.Module) or id(net) in seen:
            continue
        seen.add(id(net))
        if channels_last:
            net.to(memory_format=torch.channels_last)  # Module.to works in place
        if compile and not getattr(net, "_bench_compiled", False):
            try:
                net.forward = torch.compile(net.forward, dynamic=None)
            except Exception as exc:  # no compiler backend on this machine: one line, before anything runs
                raise InvalidArgument(f"--compile: torch.compile is not available here "
                                      f"({type(exc).__name__}: {first_line(exc)[:120]})") from None
            net._bench_compiled = True


def speed_record(channels_last: bool, compile: bool) -> dict[str, bool]:
    """What ``environment.speed`` of a run config says."""
    return {"channels_last": bool(channels_last), "compile": bool(compile)}
