"""Every random draw of a run, keyed by what it is for, never by how the work is batched.

* :func:`noise_generator` gives the certification noise of one (run seed, image, σ): every purifier sees
  the same noisy copies of an image (a paired comparison).
* :class:`CopyNoise` is the randomness a *stochastic* purifier uses: the rows of a batch (noisy copies)
  draw from streams keyed by (run seed, image, σ, block of 64 copies, vote, draw), each row taking its own
  place in its block's draw. So a purifier's output for a copy is the same whatever the batch size, the
  other images in the batch, or the order of the work.

Every key goes whole, as fixed-width 64-bit fields, through numpy's ``SeedSequence``, which is built to
turn such tuples into independent seeds, and never through ``torch.Generator.manual_seed`` on the CPU,
whose mt19937 keeps only the low 32 bits of a seed (s and s + 2³² would give the same stream).

* On the CPU (``--noise-device cpu``, the default) the draws come from numpy's PCG64 seeded by the whole
  SeedSequence (128 bits of state), made normal by numpy's own float32 ziggurat sampler
  (``Generator.standard_normal``): integer arithmetic and fixed tables, so the same values on every machine
  for one numpy version (torch's CPU sampler picks its SIMD kernel per CPU and would not be).
* On a CUDA device (``--noise-device device``) they come from torch's CUDA Philox generator, whose seed
  keeps all 64 bits the SeedSequence gives it: other values than the CPU's, but the same on every GPU of one
  torch version.

All noise is drawn in float32 whatever the run's ``--precision`` and only then cast.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

# Streams of one (seed, image, σ): 0 = certification noise, 1 = a stochastic purifier's own noise.
CERTIFICATION_STREAM = 0
PURIFIER_STREAM = 1
# σ enters the keys at this resolution (image scale), so two σs closer than it would share noise; the
# runner refuses such pairs.
SIGMA_SCALE = 1_000_000
# A stochastic purifier's noise is keyed per block of this many copies (copy // COPY_BLOCK) and drawn a
# block at once; a row's values depend on its place in the block (copy % COPY_BLOCK) alone.
COPY_BLOCK = 64


def sigma_key(sigma: float) -> int:
    """σ as the integer that keys its noise: round(σ·10⁶)."""
    return int(round(sigma * SIGMA_SCALE))


def key_words(fields: Sequence[int]) -> np.ndarray:
    """The entropy of a key: each field (an integer in [0, 2**64)) as two 32-bit words, low first.

    Fixed width because SeedSequence splits a large integer into as many words as it needs, so a list of
    plain integers would make keys (2**32, 0) and (0, 1, 0) the same entropy."""
    words = []
    for f in fields:
        f = int(f)
        if not 0 <= f < 2**64:
            raise ValueError(f"noise key fields must lie in [0, 2**64), got {f}")
        words += [f & 0xFFFFFFFF, f >> 32]
    return np.asarray(words, dtype=np.uint32)


def check_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is an integer in [0, 2**63)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer between 0 and 2**63 - 1, got {seed!r}")


class NoiseStream:
    """Standard normal draws from one key of 64-bit fields (see the module docstring), each draw continuing
    the stream. ``device``: a CUDA device draws there with torch's Philox; any other draws on the CPU."""

    def __init__(self, key: Sequence[int], device: str | torch.device = "cpu"):
        seq = np.random.SeedSequence(key_words(key))
        device = torch.device(device)
        self.device = device if device.type == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            seed = int(seq.generate_state(1, dtype=np.uint64)[0])  # all 64 bits: CUDA's Philox keeps them
            self._torch = torch.Generator(device=self.device).manual_seed(seed)
        else:
            self._numpy = np.random.Generator(np.random.PCG64(seq))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """N(0, I) float32 of ``shape`` on this stream's device. On the CPU the first rows (dimension 0) of
        a draw are the same whatever the number of rows drawn."""
        shape = tuple(int(s) for s in shape)
        if self.device.type == "cuda":
            return torch.randn(shape, generator=self._torch, device=self.device, dtype=torch.float32)
        # numpy fills in order, so the first rows of a draw are the same whatever the number of rows drawn
        return torch.from_numpy(np.asarray(self._numpy.standard_normal(shape, dtype=np.float32)))


def noise_generator(seed: int, idx: int, sigma: float, stream: int = CERTIFICATION_STREAM,
                    device: str | torch.device = "cpu") -> NoiseStream:
    """The noise stream of (run seed, image index, σ, stream) alone, on ``device`` (see :class:`NoiseStream`).
    Stream 0 is the certification noise (drawn by :func:`benchbench.smoothing.certify.noisy_batches` in fixed
    blocks). CPU and CUDA streams of one key draw different values: pairing across purifiers holds on one
    noise device."""
    return NoiseStream((stream, seed, idx, sigma_key(sigma)), device)


def _as_index(values: list[int]) -> slice | list[int]:
    """``values`` as a slice when they are evenly spaced and increasing (consecutive copies, or one vote
    of each of them), else as they are."""
    step = values[1] - values[0] if len(values) > 1 else 1
    if step > 0 and values == list(range(values[0], values[-1] + 1, step)):
        return slice(values[0], values[-1] + 1, step)
    return values


def _on(index: slice | list[int], device: torch.device) -> slice | torch.Tensor:
    return index if isinstance(index, slice) else torch.as_tensor(index, device=device)


class CopyNoise:
    """The per-copy randomness of a stochastic purifier for one batch of noisy copies.

    ``idx[j]`` and ``copy[j]`` are the test-image index and the copy index (0 … n0 + n − 1 in the order
    certification draws them) of row j; ``device`` is the run's noise device. Draw d (the d-th call of
    :meth:`randn_like`) of row j is row ``copy[j] % 64`` of one draw keyed by (seed, idx[j], σ, the stream of
    purifier noise, block ``copy[j] // 64``, sub-stream, d): a purifier that draws everything from here gives
    each copy the same output in any batch, and the noise of a block of copies is drawn at once.

    A purifier with ``votes = K`` that repeats its input K times (rows b·K … b·K+K−1 for input b) calls
    :meth:`repeat_interleave` to get K independent sub-streams per copy.

    There are no per-row ``torch.Generator`` objects (``generators``): torch's CPU generator keeps only 32
    bits of a seed. Draw with ``randn_like`` and give the noise to the step (see ``purifiers/diffusion.py``).
    """

    def __init__(self, seed: int, sigma: float, idx: Sequence[int] | torch.Tensor,
                 copy: Sequence[int] | torch.Tensor, *, sub: Sequence[int] | torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.idx = [int(i) for i in idx]
        self.copy = [int(c) for c in copy]
        if len(self.idx) != len(self.copy):
            raise ValueError(f"idx has {len(self.idx)} rows but copy has {len(self.copy)}")
        self.sub = [0] * len(self.idx) if sub is None else [int(s) for s in sub]
        if len(self.sub) != len(self.idx):
            raise ValueError(f"idx has {len(self.idx)} rows but sub has {len(self.sub)}")
        self.device = torch.device(device)
        self.draws = 0  # how many times randn_like has been called: the next draw's key
        # rows by stream: (image, block, sub-stream) -> (rows j, places in the block)
        groups: dict[tuple[int, int, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for j, (i, c, s) in enumerate(zip(self.idx, self.copy, self.sub)):
            rows, places = groups[(i, c // COPY_BLOCK, s)]
            rows.append(j)
            places.append(c % COPY_BLOCK)
        # A run's rows are mostly consecutive copies: then both sides are slices, not gathers.
        self._groups = {key: (_as_index(rows), _as_index(places)) for key, (rows, places) in groups.items()}

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def generators(self) -> list:
        raise AttributeError("CopyNoise.generators was removed (torch's CPU generators keep only 32 bits of a "
                             "seed): draw the noise with noise.randn_like(x), one row per copy")

    @classmethod
    def for_copies(cls, seed: int, sigma: float, idx: int, copies: Sequence[int] | range,
                   device: str | torch.device = "cpu") -> "CopyNoise":
        """The noise of copies ``copies`` of one image ``idx``."""
        copies = list(copies)
        return cls(seed, sigma, [idx] * len(copies), copies, device=device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` (one row per copy, rows in this object's order), drawn in
        float32 on the noise device, then cast to x's dtype and device. Each call is the next draw of every
        row's stream."""
        if len(x) != len(self):
            raise ValueError(f"noise for {len(self)} copies asked for a tensor of {len(x)} rows")
        draw, self.draws = self.draws, self.draws + 1
        per_row = math.prod(x.shape[1:])
        key = sigma_key(self.sigma)
        out = torch.empty((len(self), per_row), dtype=torch.float32,
                          device=self.device if self.device.type == "cuda" else "cpu")
        for (i, block, s), (rows, places) in self._groups.items():
            stream = NoiseStream((PURIFIER_STREAM, self.seed, i, key, block, s, draw), self.device)
            # A CUDA draw's values depend on its size, so it is always a whole block; a CPU draw's first
            # rows do not, so it stops at the last row needed.
            last = places.stop if isinstance(places, slice) else max(places) + 1
            values = stream.randn((COPY_BLOCK if stream.device.type == "cuda" else last, per_row))
            out[_on(rows, out.device)] = values[_on(places, out.device)]
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def repeat_interleave(self, k: int) -> "CopyNoise":
        """Noise for each copy repeated ``k`` times in place (rows b·k … b·k+k−1 for copy b), each repetition
        with its own independent sub-stream (0 … k−1 for a copy's plain stream; sub-stream 0 is the copy's
        own). Draws start afresh (draw 0)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return CopyNoise(self.seed, self.sigma, [i for i in self.idx for _ in range(k)],
                         [c for c in self.copy for _ in range(k)],
                         sub=[s * k + v for s in self.sub for v in range(k)], device=self.device)
