"""Noise-drawing throughput: noisy copies per second for the certification noise and a stochastic purifier's
per-copy noise, at 8×8 (digits) and 32×32×3 (CIFAR-10).

Usage: python benchmarks/noise_throughput.py [--device cpu] [--repeats 5]

Each figure is the best of ``--repeats`` timings (the machine is shared: the best is the least disturbed),
timed in CPU seconds of this one-thread process for the CPU (other jobs on a shared machine disturb that
much less than wall time), in wall seconds with synchronisation for a CUDA device.
It uses only the public API that every noise scheme has had (``noise_generator``, ``noisy_batches``,
``CopyNoise``), so running it against an older checkout (``PYTHONPATH=OLD_TREE``) gives the before figures.
"""

from __future__ import annotations

import argparse
import time
import timeit

import torch

from benchbench.smoothing.certify import noisy_batches
from benchbench.smoothing.noise import CopyNoise, noise_generator

SHAPES = {"8x8": (1, 8, 8), "32x32": (3, 32, 32)}


def copies_per_second(fn, copies: int, repeats: int, device: str) -> float:
    if device == "cpu":
        timer = time.process_time
    else:
        def timer() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
    fn()  # warm-up
    return copies / min(timeit.repeat(fn, timer=timer, number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="noise device (cpu or cuda)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=1024, help="noisy copies per timing")
    parser.add_argument("--batch", type=int, default=256, help="copies per purifier call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kw = {} if args.device == "cpu" else {"device": args.device}
    print(f"{'what':<42} {'shape':>6} {'copies/s':>12}")
    for name, shape in SHAPES.items():
        x = torch.rand(shape)

        def certification():
            for _ in noisy_batches(x, args.copies, sigma=0.5, batch_size=args.batch,
                                   generator=noise_generator(0, 1, 0.5, device=args.device)):
                pass

        def purifier(votes: int):
            def draw():
                batch = torch.empty((args.batch, *shape))
                for start in range(0, args.copies, args.batch):
                    noise = CopyNoise.for_copies(0, 0.5, 1, range(start, start + args.batch), **kw)
                    if votes > 1:
                        noise = noise.repeat_interleave(votes)
                        batch = torch.empty((args.batch * votes, *shape))
                    noise.randn_like(batch)  # one step's noise for every copy (and vote)
            return draw

        for what, fn in (("certification noise (noisy_batches)", certification),
                         ("purifier noise, one draw per copy (sde)", purifier(1)),
                         ("purifier noise, 5 votes per copy (densepure)", purifier(5))):
            print(f"{what:<42} {name:>6} {copies_per_second(fn, args.copies, args.repeats, args.device):>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
