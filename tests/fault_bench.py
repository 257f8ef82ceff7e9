"""`bench` with broken plugins registered and, on request, an injected OS fault: the fault-injection suite
runs this file as a real subprocess (``python tests/fault_bench.py run ...``).

Purifiers registered here break the purifier contract one way each. ``BENCH_FAULT=ERRNO:SUBSTRING`` makes
every open-for-writing (and mkdir) of a path containing SUBSTRING fail with that errno (ENOSPC: the file
opens but every write fails, as on a full disk; EROFS: nothing can be created)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys

import numpy as np
import torch

from benchbench.registry import register_purifier

CALLS = {"n": 0}


class _Base:
    networks = ()

    def __init__(self, device: str = "cpu", dataset: str = "digits"):
        pass


def _simple(name: str, fn):
    cls = type(name, (_Base,), {"__call__": lambda self, x, sigma: fn(x), "__doc__": f"fault: {name}"})
    register_purifier(name)(cls)


_simple("nan", lambda x: x * float("nan"))
_simple("inf", lambda x: x.clamp(0, 1) + float("inf"))
_simple("uint8", lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8))
_simple("float64", lambda x: x.clamp(0, 1).double())
_simple("float16", lambda x: x.clamp(0, 1).half())
_simple("clamp", lambda x: x.clamp(0, 1))
_simple("as-numpy", lambda x: x.clamp(0, 1).numpy())
_simple("none", lambda x: None)
_simple("minus-one-to-one", lambda x: 2 * x.clamp(0, 1) - 1)
_simple("wrong-shape", lambda x: x.clamp(0, 1)[:, :, :4])
_simple("raises", lambda x: (_ for _ in ()).throw(RuntimeError("boom inside the plugin")))


def _late_nan(x: torch.Tensor) -> torch.Tensor:
    # Fine for the pre-run check (three calls: contract, then two memory probes) and the first image, NaN from
    # then on.
    CALLS["n"] += 1
    return x.clamp(0, 1) * (float("nan") if CALLS["n"] > 4 else 1.0)


_simple("late-nan", _late_nan)


@register_purifier("late-exit")
class LateExit(_Base):
    """fault: calls sys.exit(0) from its fifth call on (after the pre-run check: contract, two memory probes; and the first image)"""

    def __init__(self, device: str = "cpu", dataset: str = "digits"):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        if self.calls > 4:
            sys.exit(0)
        return x.clamp(0, 1)


_simple("exits", lambda x: sys.exit(0))


@register_purifier("factory-raises")
class FactoryRaises(_Base):
    """fault: its constructor raises"""

    def __init__(self, device: str = "cpu", dataset: str = "digits"):
        raise ValueError("cannot load my weights")


@register_purifier("networks-none")
class NetworksNone(_Base):
    """fault: networks is None"""

    networks = None

    def __call__(self, x, sigma):
        return x.clamp(0, 1)


def _inject(spec: str) -> None:
    name, _, needle = spec.partition(":")
    code = getattr(errno, name)
    real_open, real_mkdir = io.open, os.mkdir

    class FullFile(io.TextIOWrapper):
        def write(self, text):  # as a full disk does: the file exists, nothing fits
            raise OSError(code, os.strerror(code), self.name)

    def hit(path) -> bool:
        return needle in os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else False

    def fake_open(file, mode="r", *args, **kwargs):
        if hit(file) and any(m in mode for m in "wax+"):
            if code == errno.ENOSPC:
                return FullFile(real_open(file, mode.replace("t", "") + ("b" if "b" not in mode else ""), *args[:1]),
                                encoding="utf-8")
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if hit(path) and code != errno.ENOSPC:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    io.open = builtins.open = fake_open
    os.mkdir = fake_mkdir


if __name__ == "__main__":
    if os.environ.get("BENCH_FAULT"):
        _inject(os.environ["BENCH_FAULT"])
    from benchbench.cli import main

    np.seterr(all="ignore")
    sys.exit(main(sys.argv[1:]))
