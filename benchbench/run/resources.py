"""Checks of the machine before a run writes anything: the device, memory for one batch (measured, not
guessed), and a writable output location."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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


class PeakMeter(TorchDispatchMode):
    """Bytes of tensor storage allocated and alive at the peak of a block, on any device: every storage an
    operator creates is counted from its creation until it is freed (a finaliser on the storage), so what a
    no-grad forward frees as it goes is not counted twice. Storages that existed before (weights, inputs,
    views of them) are not counted. Memory an operator uses internally and frees before it returns
    (a convolution's workspace) is not seen; :func:`measure_peak` uses the CUDA allocator's own peak there."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for s in map(_storage, pytree.tree_leaves((args, kwargs))) if s is not None}
        for t in pytree.tree_leaves(out):
            storage = _storage(t)
            if storage is None:
                continue
            key, nbytes = storage.data_ptr(), storage.nbytes()
            # a view or an in-place result shares an input's storage; a storage seen already is counted once
            if nbytes == 0 or key in inputs or key in self._tracked:
                continue
            self._tracked.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def _storage(t: Any) -> torch.UntypedStorage | None:
    """The storage behind a dense tensor; None for anything else (a sparse or meta tensor, a non-tensor)."""
    if not isinstance(t, torch.Tensor) or t.is_meta:
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


def measure_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """``fn()``'s result and the bytes it had allocated on top of what was allocated before, at its peak:
    ``torch.cuda.max_memory_allocated`` on a CUDA device (the allocator's own count, workspaces included),
    the live tensor storage of :class:`PeakMeter` elsewhere (torch's CPU allocator keeps no peak; the
    profiler's memory trace has one, but takes seconds to start and prints to stderr)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - before)
    with PeakMeter() as meter:
        result = fn()
    return result, meter.peak


@dataclass(frozen=True)
class MemoryModel:
    """Bytes one network batch needs: ``fixed`` + ``per_row`` × rows, fitted through the measured peaks of
    two batch sizes (so what does not grow with the batch, like an autocast weight cache, is not charged
    per row)."""

    fixed: int
    per_row: int

    @classmethod
    def fit(cls, rows: tuple[int, int], peaks: tuple[int, int]) -> "MemoryModel":
        """The line through (rows[0], peaks[0]) and (rows[1], peaks[1]); with one batch size, all per row."""
        (a, b), (pa, pb) = rows, peaks
        if b <= a or pb <= pa:  # no slope to fit: charge the larger peak to the rows it was measured on
            return cls(0, max(1, -(-max(pa, pb) // max(b, 1))))
        per_row = -(-(pb - pa) // (b - a))  # rounded up
        return cls(max(0, pb - per_row * b), per_row)

    def need(self, rows: int) -> int:
        return self.fixed + self.per_row * rows


def check_batch_memory(model: MemoryModel, rows: int, device: torch.device, what: str,
                       free: Callable[[torch.device], int] = available_memory) -> None:
    """Refuse a batch of ``rows`` rows needing ``model.need(rows)`` bytes when ``device`` has not that much
    free (less a headroom)."""
    need = model.need(rows)
    have = int(free(device) * MEMORY_FRACTION)
    if need > have:
        fits = max(1, (have - model.fixed) // max(model.per_row, 1))
        raise InvalidArgument(f"{what}: a batch of {rows:,} noisy samples needs about {_gb(need)} on {device} "
                              f"(measured on two small batches), more than the {_gb(have)} free; "
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
