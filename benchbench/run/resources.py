"""Checks of the machine before a run writes anything: the device, memory for one batch, and a writable
output location."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from benchbench.errors import InvalidArgument

# File systems that hold no files of ours (kernel interfaces), where --out can never work.
PSEUDO_FILESYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "devtmpfs", "devpts", "debugfs", "tracefs",
                      "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs",
                      "binfmt_misc", "efivarfs", "nsfs", "rpc_pipefs", "selinuxfs"}
# Headroom left to everything else on the device when sizing a batch.
MEMORY_FRACTION = 0.8


def check_device(name: str) -> torch.device:
    """The torch device ``name`` if benchbench can run on it here; InvalidArgument otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(),
              "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if device is None or not usable.get(device.type, False):
        have = ", ".join(k for k, ok in usable.items() if ok)
        why = "not a torch device" if device is None else (
            "not available on this machine" if device.type in usable else "not a device benchbench runs on")
        raise InvalidArgument(f"--device {name!r}: {why} (available: {have})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidArgument(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free CUDA memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ActivationMeter:
    """Measures, during one small forward pass, an upper bound of the memory the networks need per input
    row: for each top-level network call, the bytes of every leaf module's outputs (all that a no-grad
    forward can hold at once), divided by the rows of the batch that was purified.

    TorchScript modules refuse hooks, so they are opaque: a module whose children are all TorchScript
    counts as a leaf (its output only), and a TorchScript network is not measured. Their activations are
    then left out of the estimate, which is a lower bound for them."""

    def __init__(self, networks: Sequence[torch.nn.Module]):
        self.networks = [n for n in networks if isinstance(n, torch.nn.Module)]
        self.peak = 0  # bytes of the largest top-level call
        self._current = 0
        self._handles: list = []

    def _leaf_hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(t, torch.Tensor):
                self._current += t.numel() * t.element_size()
            elif hasattr(t, "sample") and isinstance(t.sample, torch.Tensor):  # diffusers' output classes
                self._current += t.sample.numel() * t.sample.element_size()

    def _start(self, *_: object) -> None:
        self._current = 0

    def _end(self, *_: object) -> None:
        self.peak = max(self.peak, self._current)

    def __enter__(self) -> "ActivationMeter":
        for net in self.networks:
            if _scripted(net):
                continue
            self._handles.append(net.register_forward_pre_hook(self._start))
            self._handles.append(net.register_forward_hook(self._end))
            for m in net.modules():
                if not _scripted(m) and all(_scripted(c) for c in m.children()):
                    self._handles.append(m.register_forward_hook(self._leaf_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _scripted(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def check_batch_memory(per_row: int, rows: int, device: torch.device, what: str,
                       free: Callable[[torch.device], int] = available_memory) -> None:
    """Refuse a batch of ``rows`` rows needing ``per_row`` bytes each when ``device`` has not that much free."""
    need = per_row * rows
    have = int(free(device) * MEMORY_FRACTION)
    if need > have:
        fits = max(1, have // max(per_row, 1))
        raise InvalidArgument(f"{what}: a batch of {rows:,} noisy samples needs about {_gb(need)} on {device} "
                            f"(estimated from the networks' activations), more than the {_gb(have)} free; "
                            f"use --batch-size {fits:,} or less")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def _mounts() -> list[tuple[str, str, list[str]]]:
    try:
        with open("/proc/mounts") as fh:
            entries = [line.split() for line in fh]
    except OSError:
        return []
    # Octal escapes (\040 for a space) in mount points.
    decode = lambda p: p.encode().decode("unicode_escape")  # noqa: E731
    return [(decode(e[1]), e[2], e[3].split(",")) for e in entries if len(e) >= 4]


def check_output_location(path: Path) -> None:
    """Refuse an output path that cannot hold a run: inside a pseudo file system (procfs, sysfs…), on a
    read-only file system, under a file, or in a directory we may not write. Writes nothing."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    real = Path(os.path.realpath(existing))
    best = None
    for mount, fstype, options in _mounts():
        mp = Path(mount)
        if (real == mp or mp in real.parents) and (best is None or len(str(mp)) > len(str(best[0]))):
            best = (mp, fstype, options)
    if best is not None and best[1] in PSEUDO_FILESYSTEMS:
        raise InvalidArgument(f"--out {path}: inside {best[0]}, a {best[1]} pseudo file system; choose a directory "
                              "on a disk")
    if existing != path and not existing.is_dir():
        raise InvalidArgument(f"--out {path}: {existing} is a file, not a directory")
    if best is not None and "ro" in best[2]:
        raise InvalidArgument(f"--out {path}: {best[0]} is a read-only file system")
    target = path if path.exists() else existing
    if not os.access(target, os.W_OK | os.X_OK):
        raise InvalidArgument(f"--out {path}: {target} is not writable")
