"""Noisy samples per second: the harness against a bare loop over the same networks, and CPU speed options.

    python benchmarks/throughput.py ratio [--purifiers ddpm,sde] [--n 10000] [--images 2] [--batch-size 1000]
                                          [--device cpu|cuda] [--precision fp32|bf16|fp16]
    python benchmarks/throughput.py cpu   [--n 2000] [--images 2]

``ratio``: for each purifier, certification of ``--images`` digits at σ = 0.5 with n0 = 100 and ``--n`` by
the harness (:func:`benchbench.run.runner.certify_task`: keyed noise, per-copy purifier noise, output checks,
counting, packing) and by a bare loop a researcher would write (x + σ·randn from one generator, purifier,
classifier, argmax, bincount; a stochastic purifier gets one shared generator), alternated ``--repeat``
times; prints samples/s of both and harness time / bare time.

``cpu``: the bare ddpm loop under each CPU option, side by side in one process — torch threads, no_grad vs
inference_mode, channels_last, torch.compile, batch size — with samples/s and whether the labels stay
identical to the default's.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchbench.run.plan import Task, images_per_task
from benchbench.registry import PurifierSpec, purify
from benchbench.run.runner import RunConfig, build_context, certify_task

SIGMA = 0.5


class SharedNoise:
    """The noise source of a bare loop: one generator for the whole batch (not per copy)."""

    def __init__(self, seed: int):
        self.generators = [torch.Generator().manual_seed(seed)]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generators[0]).to(x.device, x.dtype)

    def repeat_interleave(self, k: int) -> "SharedNoise":
        return self


def bare_loop(ctx, label: str, indices, n0: int, n: int, batch_size: int,
              mode=torch.inference_mode) -> list[torch.Tensor]:
    """Labels of every noisy copy, the way a plain script computes them."""
    purifier, out = ctx.purifiers[label], []
    gen = torch.Generator().manual_seed(0)
    noise = SharedNoise(1)
    with mode():
        for idx in indices:
            x = ctx.test.images[idx].to(ctx.device)
            for total in (n0, n):
                for start in range(0, total, batch_size):
                    k = min(batch_size, total - start)
                    batch = x + SIGMA * torch.randn((k, *x.shape), generator=gen).to(ctx.device)
                    purified = purify(purifier, batch, SIGMA, noise)
                    out.append(ctx.classifier(purified).argmax(1).cpu())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ratio(args: argparse.Namespace) -> None:
    specs = [PurifierSpec.parse(s) for s in args.purifiers.split(",")]
    config = RunConfig(purifiers=specs, n0=100, n=args.n, batch_size=args.batch_size, device=args.device,
                       sigmas=(SIGMA,), precision=args.precision, num_images=args.images)
    ctx = build_context(config, torch.device(args.device))
    indices = ctx.indices[: args.images]
    samples = len(indices) * (config.n0 + config.n)
    per = images_per_task(config.n0, config.n, config.batch_size)
    print(f"device={args.device} threads={torch.get_num_threads()} n0=100 n={args.n} images={len(indices)} "
          f"batch={args.batch_size} precision={args.precision} images/task={per}")
    print("| purifier | harness samples/s | bare samples/s | harness / bare time |")
    print("|:--|--:|--:|--:|")
    for spec in specs:
        h = b = 0.0
        for _ in range(args.repeat):
            _sync(ctx.device)
            t = time.perf_counter()
            for k in range(0, len(indices), per):
                certify_task(ctx, Task(spec.label, SIGMA, tuple(indices[k : k + per])))
            _sync(ctx.device)
            h += time.perf_counter() - t
            t = time.perf_counter()
            bare_loop(ctx, spec.label, indices, config.n0, config.n, config.batch_size)
            _sync(ctx.device)
            b += time.perf_counter() - t
        print(f"| {spec.label} | {samples * args.repeat / h:,.0f} | {samples * args.repeat / b:,.0f} | {h / b:.3f} |")


def cpu(args: argparse.Namespace) -> None:
    config = RunConfig(purifiers=[PurifierSpec("ddpm")], n0=100, n=args.n, sigmas=(SIGMA,), num_images=args.images)
    ctx = build_context(config, torch.device("cpu"))
    indices = ctx.indices[: args.images]
    samples = len(indices) * (config.n0 + config.n)
    purifier = ctx.purifiers["ddpm"]
    base_unet, base_clf = purifier.unet, ctx.classifier

    def timed(batch: int, mode=torch.inference_mode) -> tuple[float, torch.Tensor]:
        bare_loop(ctx, "ddpm", indices[:1], 8, 64, batch, mode)  # warm-up
        t = time.perf_counter()
        labels = torch.cat(bare_loop(ctx, "ddpm", indices, config.n0, config.n, batch, mode))
        return samples / (time.perf_counter() - t), labels

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows.append((f"{threads} thread(s), batch 1000, inference_mode", *timed(1000)))
    ref = rows[-1][2]
    rows.append(("2 threads, batch 1000, no_grad", *timed(1000, torch.no_grad)))
    for batch in (250, 4000):
        rows.append((f"2 threads, batch {batch}", *timed(batch)))
    purifier.unet = base_unet.to(memory_format=torch.channels_last)
    ctx.classifier = base_clf.to(memory_format=torch.channels_last)
    rows.append(("2 threads, batch 1000, channels_last", *timed(1000)))
    purifier.unet, ctx.classifier = base_unet.to(memory_format=torch.contiguous_format), \
        base_clf.to(memory_format=torch.contiguous_format)
    try:
        purifier.unet, ctx.classifier = torch.compile(base_unet), torch.compile(base_clf)
        rows.append(("2 threads, batch 1000, torch.compile", *timed(1000)))
    except Exception as exc:  # no compiler toolchain: say so
        print(f"torch.compile unavailable: {type(exc).__name__}: {str(exc)[:100]}")
    finally:
        purifier.unet, ctx.classifier = base_unet, base_clf
    print(f"bare ddpm loop, {len(indices)} digits × {samples // len(indices)} samples at σ={SIGMA}")
    print("| option | samples/s | vs 2 threads default | labels identical |")
    print("|:--|--:|--:|:--|")
    base = rows[1][1]
    for name, rate, labels in rows:
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {bool(torch.equal(labels, ref))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("ratio")
    r.add_argument("--purifiers", default="identity,ddpm,sde,pfode,consistency,consistency-ft")
    r.add_argument("--n", type=int, default=10_000)
    r.add_argument("--images", type=int, default=2)
    r.add_argument("--batch-size", type=int, default=1000)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    r.add_argument("--repeat", type=int, default=1)
    c = sub.add_parser("cpu")
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    ratio(args) if args.what == "ratio" else cpu(args)


if __name__ == "__main__":
    main()
