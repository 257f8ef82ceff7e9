"""What a run certifies, apart from how it is executed.

A run's work is a list of *units* — (purifier label, σ, image index) — in a fixed order: purifier, then σ,
then image, as the config lists them. Every unit is fully determined by the config and the run seed (all
its randomness is keyed by (seed, image, σ, copy), see :mod:`benchbench.smoothing.noise`), so it gives the same row
wherever it runs: in this process, in a shard, or on a Ray worker.

* ``--shard K/N`` keeps units K−1, K−1+N, K−1+2N, … of that list: a deterministic 1/N, balanced across
  purifiers and σs, whatever was already done.
* A *task* is a chunk of consecutive units of one (purifier, σ): up to ``images_per_task`` images whose
  noisy copies are packed into shared batches, so a small n still fills a batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from benchbench.errors import InvalidArgument


@dataclass(frozen=True)
class Task:
    """Certify images ``indices`` (test-set indices) through purifier ``label`` at σ."""

    label: str
    sigma: float
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based), as given by ``--shard K/N``."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise InvalidArgument(f"--shard must be K/N with 1 <= K <= N, got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


Unit = tuple[str, float, int]


def units(labels: Sequence[str], sigmas: Sequence[float], indices: Sequence[int]) -> list[Unit]:
    """Every (purifier label, σ, image) of a run, in run order."""
    return [(label, sigma, idx) for label in labels for sigma in sigmas for idx in indices]


def shard_units(all_units: Sequence[Unit], shard: Shard | None) -> list[Unit]:
    """The units of ``shard`` (all of them when None): every N-th, starting at K−1."""
    return list(all_units) if shard is None else list(all_units[shard.k - 1 :: shard.n])


def images_per_task(n0: int, n: int, batch_size: int) -> int:
    """How many images one task packs: enough copies (n0 + n each) to fill a batch, at least one."""
    return max(1, batch_size // (n0 + n))


def make_tasks(todo: Iterable[Unit], per_task: int) -> list[Task]:
    """Group consecutive units of one (purifier, σ) into tasks of at most ``per_task`` images."""
    tasks: list[Task] = []
    current: list[int] = []
    key: tuple[str, float] | None = None
    for label, sigma, idx in todo:
        if key != (label, sigma) or len(current) == per_task:
            if current:
                tasks.append(Task(key[0], key[1], tuple(current)))  # type: ignore[index]
            key, current = (label, sigma), []
        current.append(idx)
    if current:
        tasks.append(Task(key[0], key[1], tuple(current)))  # type: ignore[index]
    return tasks
