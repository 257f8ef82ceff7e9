"""Noisy samples per second: the harness against a bare loop over the same networks, and CPU speed options.

    python benchmarks/throughput.py ratio [--purifiers ddpm,sde] [--n 10000] [--images 2] [--batch-size 1000]
                                          [--device cpu|cuda] [--precision fp32|bf16|fp16] [--channels-last]
                                          [--compile] [--repeat R]
    python benchmarks/throughput.py cpu   [--n 2000] [--images 1] [--repeat 5] [--no-compile]

``ratio``: for each purifier, certification of ``--images`` digits at σ = 0.5 with n0 = 100 and ``--n`` by
the harness (:func:`benchbench.run.runner.certify_task`: keyed noise, per-copy purifier noise, output checks,
counting, packing) and by a bare loop a researcher would write (x + σ·randn from one generator, purifier,
classifier, argmax, bincount; a stochastic purifier gets one shared generator), alternated ``--repeat``
times; prints samples/s of both and harness time / bare time. Under ``--precision bf16|fp16`` both run
under the same autocast (like with like).

``cpu``: the ddpm loop under each CPU option, the bare loop and the harness, side by side in one process —
torch threads, no_grad vs inference_mode, batch size, channels_last, torch.compile, and the harness with
the winning options combined — each timed ``--repeat`` times, the options alternated within every repeat
(starting at a different option each time, so load that drifts over the run spreads over all of them).
Prints the median samples/s, the min–max over the repeats, the median against the default's, and whether
the labels (bare loop) or rows (harness) are identical to the default's. torch.compile's compile time is
measured apart (its first, cold run minus its median warm run) and amortised over the reference protocol's
9.09 million ddpm samples.

The CPU cost of a stochastic purifier's per-copy noise streams is ``benchmarks/noise_throughput.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchbench.run.plan import Task, images_per_task
from benchbench.registry import PurifierSpec, purify
from benchbench.run.runner import RunConfig, autocast, build_context, certify_task

# ddpm's samples in the reference protocol: 450 digits × 2 σ × (100 + 10,000) copies
REFERENCE_SAMPLES = 450 * 2 * 10_100

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
    """Labels of every noisy copy, the way a plain script computes them (under the run's precision)."""
    purifier, out = ctx.purifiers[label], []
    gen = torch.Generator().manual_seed(0)
    noise = SharedNoise(1)
    with mode(), autocast(ctx):  # the harness's autocast, so both loops compute at the same precision
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
                       sigmas=(SIGMA,), precision=args.precision, num_images=args.images,
                       channels_last=args.channels_last, compile=args.compile)
    ctx = build_context(config, torch.device(args.device))
    indices = ctx.indices[: args.images]
    samples = len(indices) * (config.n0 + config.n)
    per = images_per_task(config.n0, config.n, config.batch_size)
    print(f"device={args.device} threads={torch.get_num_threads()} n0=100 n={args.n} images={len(indices)} "
          f"batch={args.batch_size} precision={args.precision} images/task={per} "
          f"channels_last={args.channels_last} compile={args.compile}")
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


class Option:
    """One CPU configuration of the ddpm loop: a context (its own model copies: channels_last and compile
    change modules in place), threads, batch size, grad mode, and bare loop or harness."""

    def __init__(self, name: str, ctx, threads: int, batch: int, harness: bool, mode=torch.inference_mode):
        self.name, self.ctx, self.threads, self.batch, self.harness, self.mode = \
            name, ctx, threads, batch, harness, mode
        self.rates: list[float] = []
        self.cold_s: float | None = None
        self.result = None

    def once(self, indices, n0: int, n: int) -> float:
        """Seconds of one pass over ``indices``; keeps the labels (bare) or rows (harness) of the pass."""
        torch.set_num_threads(self.threads)
        t = time.perf_counter()
        if self.harness:
            self.ctx.config.batch_size = self.batch
            per = images_per_task(n0, n, self.batch)
            rows = []
            for k in range(0, len(indices), per):
                rows += certify_task(self.ctx, Task("ddpm", SIGMA, tuple(indices[k : k + per])))
            result = [(r["idx"], r["predict"], r["pa_lower"]) for r in rows]
        else:
            result = torch.cat(bare_loop(self.ctx, "ddpm", indices, n0, n, self.batch, self.mode))
        seconds = time.perf_counter() - t
        self.result = result
        return seconds


def cpu(args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    n0 = 100

    def context(**speed):
        config = RunConfig(purifiers=[PurifierSpec("ddpm")], n0=n0, n=args.n, sigmas=(SIGMA,),
                           num_images=args.images, **speed)
        return build_context(config, torch.device("cpu"))

    eager, cl = context(), context(channels_last=True)
    options = [Option(f"bare, {threads} thread(s), batch 1000", eager, threads, 1000, False),
               Option("bare, 1 thread", eager, 1, 1000, False),
               Option("bare, no_grad", eager, threads, 1000, False, torch.no_grad),
               Option("bare, batch 250", eager, threads, 250, False),
               Option("bare, batch 4000", eager, threads, 4000, False),
               Option("bare, channels_last", cl, threads, 1000, False),
               Option(f"harness, {threads} thread(s), batch 1000", eager, threads, 1000, True),
               Option("harness, 1 thread", eager, 1, 1000, True),
               Option("harness, batch 250", eager, threads, 250, True),
               Option("harness, channels_last", cl, threads, 1000, True),
               # the options that beat the default one by one, together: they need not add up
               Option("harness, channels_last + batch 250", cl, threads, 250, True)]
    if not args.no_compile:
        # each its own compiled copy, so each cold run holds its own compilation (inductor's on-disk cache
        # may serve the second: as it would a user's second run)
        options += [Option("bare, torch.compile", context(compile=True), threads, 1000, False),
                    Option("harness, torch.compile", context(compile=True), threads, 1000, True),
                    Option("harness, torch.compile + channels_last + batch 250",
                           context(compile=True, channels_last=True), threads, 250, True)]
    indices = eager.indices[: args.images]
    samples = len(indices) * (n0 + args.n)
    for opt in options:  # the cold run: warms caches; for torch.compile it includes the compilation
        opt.cold_s = opt.once(indices, n0, args.n)
    for r in range(args.repeat):
        order = options[r % len(options):] + options[: r % len(options)]
        for opt in order:
            opt.rates.append(samples / opt.once(indices, n0, args.n))
        print(f"repeat {r + 1}/{args.repeat} done", flush=True)
    torch.set_num_threads(threads)
    print(f"ddpm, {len(indices)} digit(s) × {n0 + args.n} samples at σ={SIGMA}, {args.repeat} alternated "
          f"repeats; median samples/s, [min, max] over repeats")
    print("| option | samples/s | [min, max] | vs default (median) | identical to default |")
    print("|:--|--:|--:|--:|:--|")
    base = {h: next(o for o in options if o.harness == h) for h in (False, True)}
    for opt in options:
        med, ref = statistics.median(opt.rates), statistics.median(base[opt.harness].rates)
        same = (torch.equal(opt.result, base[False].result) if not opt.harness
                else opt.result == base[True].result)
        print(f"| {opt.name} | {med:,.0f} | [{min(opt.rates):,.0f}, {max(opt.rates):,.0f}] | {med / ref:.2f} | "
              f"{same} |")
    for opt in options:
        if "compile" in opt.name:
            warm = samples / statistics.median(opt.rates)
            compile_s = max(0.0, opt.cold_s - warm)
            run_s = REFERENCE_SAMPLES / statistics.median(opt.rates)
            eager_s = REFERENCE_SAMPLES / statistics.median(base[opt.harness].rates)
            print(f"{opt.name}: compile ≈ {compile_s:.0f} s (cold run {opt.cold_s:.0f} s − warm {warm:.1f} s); "
                  f"over the reference protocol's {REFERENCE_SAMPLES:,} ddpm samples: {run_s / 3600:.2f} h "
                  f"+ compile vs eager {eager_s / 3600:.2f} h = {(run_s + compile_s) / eager_s:.2f}× the time")


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
    r.add_argument("--channels-last", action="store_true")
    r.add_argument("--compile", action="store_true")
    c = sub.add_parser("cpu")
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--images", type=int, default=1)
    c.add_argument("--repeat", type=int, default=5)
    c.add_argument("--no-compile", action="store_true", help="leave torch.compile out (no compiler here)")
    args = parser.parse_args()
    {"ratio": ratio, "cpu": cpu}[args.what](args)


if __name__ == "__main__":
    main()
