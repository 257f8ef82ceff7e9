"""Every random draw of a run, keyed by what it is for, never by how the work is batched.

* :func:`noise_generator` gives the certification noise of one (run seed, image, σ): every purifier sees
  the same noisy copies of an image (a paired comparison).
* :class:`CopyNoise` is the randomness a *stochastic* purifier uses: row j of a batch (one noisy copy)
  draws from its own generator keyed by (run seed, image of row j, σ, copy index of row j). So a purifier's
  output for a copy is the same whatever the batch size, the other images in the batch, or the device.

Both are CPU ``torch.Generator`` streams (the values do not depend on the device the work runs on); the
keys go through numpy's ``SeedSequence``, which is built to turn such tuples into independent seeds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Streams of one (seed, image, σ): 0 = certification noise, 1 = a stochastic purifier's own noise.
CERTIFICATION_STREAM = 0
PURIFIER_STREAM = 1
# σ enters the keys at this resolution (image scale), so two σs closer than it would share noise; the
# runner refuses such pairs.
SIGMA_SCALE = 1_000_000


def sigma_key(sigma: float) -> int:
    """σ as the integer that keys its noise: round(σ·10⁶)."""
    return int(round(sigma * SIGMA_SCALE))


def _seed(entropy: Sequence[int], spawn_key: Sequence[int] = ()) -> int:
    state = np.random.SeedSequence(list(entropy), spawn_key=tuple(spawn_key)).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


def check_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is an integer in [0, 2**63)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer between 0 and 2**63 - 1, got {seed!r}")


def noise_generator(seed: int, idx: int, sigma: float, stream: int = CERTIFICATION_STREAM,
                    device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded by (run seed, image index, σ, stream) alone. Stream 0 is the
    certification noise (drawn by :func:`benchbench.smoothing.certify.noisy_batches` in fixed blocks). A CUDA
    generator with the same seed draws other values than the CPU one, but the same on every GPU of one
    torch version: pairing across purifiers holds on one noise device."""
    return torch.Generator(device=device).manual_seed(_seed([seed, idx, sigma_key(sigma), stream]))


class CopyNoise:
    """The per-copy randomness of a stochastic purifier for one batch of noisy copies.

    ``idx[j]`` and ``copy[j]`` are the test-image index and the copy index (0 … n0 + n − 1 in the order
    certification draws them) of row j. Row j's generator is keyed by (seed, idx[j], σ, copy[j]) and the
    stream of purifier noise alone, so a purifier that draws everything from here gives each copy the same
    output in any batch. Successive draws continue each row's stream.

    A purifier with ``votes = K`` that repeats its input K times (rows b·K … b·K+K−1 for input b) calls
    :meth:`repeat_interleave` to get K independent streams per copy.
    """

    def __init__(self, seed: int, sigma: float, idx: Sequence[int] | torch.Tensor,
                 copy: Sequence[int] | torch.Tensor, *, sub: Sequence[int] | torch.Tensor | None = None):
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.idx = [int(i) for i in idx]
        self.copy = [int(c) for c in copy]
        if len(self.idx) != len(self.copy):
            raise ValueError(f"idx has {len(self.idx)} rows but copy has {len(self.copy)}")
        self.sub = [0] * len(self.idx) if sub is None else [int(s) for s in sub]
        key = sigma_key(self.sigma)
        # One generator per row; the sub-stream (a vote of a multi-sample purifier) is a SeedSequence
        # spawn key, so sub-stream 0 of a copy is its plain stream.
        self.generators = [
            torch.Generator().manual_seed(_seed([self.seed, i, key, PURIFIER_STREAM, c], (s,) if s else ()))
            for i, c, s in zip(self.idx, self.copy, self.sub)
        ]

    def __len__(self) -> int:
        return len(self.generators)

    @classmethod
    def for_copies(cls, seed: int, sigma: float, idx: int, copies: Sequence[int] | range) -> "CopyNoise":
        """The noise of copies ``copies`` of one image ``idx``."""
        copies = list(copies)
        return cls(seed, sigma, [idx] * len(copies), copies)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` (one row per copy, rows in this object's order), drawn
        in float32 on the CPU from each row's generator, then cast to x's dtype and device."""
        if len(x) != len(self):
            raise ValueError(f"noise for {len(self)} copies asked for a tensor of {len(x)} rows")
        shape = (1, *x.shape[1:])
        rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.cat(rows).to(device=x.device, dtype=x.dtype)

    def repeat_interleave(self, k: int) -> "CopyNoise":
        """Noise for each copy repeated ``k`` times in place (rows b·k … b·k+k−1 for copy b), each repetition
        with its own independent stream (sub-stream 0 … k−1)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return CopyNoise(self.seed, self.sigma, [i for i in self.idx for _ in range(k)],
                         [c for c in self.copy for _ in range(k)],
                         sub=[s * k + v for s in self.sub for v in range(k)])
