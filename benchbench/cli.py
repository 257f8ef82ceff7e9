"""The `bench` command: parse, call, print. Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from benchbench.errors import BenchError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _build_parser() -> argparse.ArgumentParser:
    from benchbench.presets import PRESETS

    parser = _Parser(prog="bench", description="Compare diffusion purifiers for randomized-smoothing certification.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="certify test images through each purifier, per σ")
    run.add_argument("--purifiers", default="all",
                     help="comma list of name[:key=value...] specs, or 'all' (default: all)")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                     help="protocol defaults; the flags below override them (default: quick)")
    run.add_argument("--dataset", help="dataset name (default: digits)")
    run.add_argument("--sigmas", help="comma list of noise levels σ in image scale [0,1]")
    run.add_argument("--n0", type=int, help="selection samples per image")
    run.add_argument("--n", type=int, help="estimation samples per image")
    run.add_argument("--alpha", type=float, help="failure probability of each certificate")
    run.add_argument("--num-images", type=int, help="how many test images")
    run.add_argument("--skip", type=int, help="stride between test images")
    run.add_argument("--batch-size", type=int, help="noisy samples per forward batch")
    run.add_argument("--seed", type=int, help="run seed: fixes every noise draw")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--classifier", help="classifier model reference (default: the dataset's)")
    run.add_argument("--out", help="run directory (default: results/<preset>-<dataset>-<time>)")

    train = sub.add_parser("train", help="train the embedded default models from scratch")
    tsub = train.add_subparsers(dest="what", required=True, parser_class=_Parser)
    for what in ("classifier", "ddpm"):
        t = tsub.add_parser(what, help=f"train the {what}")
        t.add_argument("--out", required=True, help="new folder to write the model to")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--device", default="cpu")
        t.add_argument("--dataset", default="digits")
        if what == "ddpm":
            t.add_argument("--steps", type=int, help="optimiser steps")
        else:
            t.add_argument("--epochs", type=int, help="passes over the training set")

    lst = sub.add_parser("list", help="list registered purifiers or datasets")
    lst.add_argument("what", choices=["purifiers", "datasets"])
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from benchbench.runner import RunConfig, run

    config = RunConfig.from_args(args)
    result = run(config)
    print(result.summary_markdown)
    print(f"\nwrote {result.run_dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    if args.what == "classifier":
        from benchbench.train.classifier import ClassifierConfig, train_classifier

        cfg = ClassifierConfig(dataset=args.dataset, seed=args.seed)
        if args.epochs is not None:
            cfg.epochs = args.epochs
        manifest = train_classifier(args.out, cfg, device=args.device)
    else:
        from benchbench.train.ddpm import DDPMConfig, train_ddpm

        cfg = DDPMConfig(dataset=args.dataset, seed=args.seed)
        if args.steps is not None:
            cfg.steps = args.steps
        manifest = train_ddpm(args.out, cfg, device=args.device)
    print(json.dumps(manifest["metrics"], indent=2))
    print(f"wrote {args.out} in {manifest['train_seconds']} s")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "datasets":
        from benchbench.data import available_datasets, dataset_info

        for name in available_datasets():
            info = dataset_info(name)
            print(f"{name}  classifier={info.default_classifier}  ddpm={info.default_ddpm}")
        return 0
    from benchbench.registry import available_purifiers, describe, purifier_params

    for name in available_purifiers():
        params = ", ".join(f"{p.name}: {p.kind.__name__} = {p.default!r}" for p in purifier_params(name))
        print(f"{name}({params})\n    {describe(name)}")
    return 0


COMMANDS = {"run": _cmd_run, "train": _cmd_train, "list": _cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bench` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bench: interrupted; rows written so far are kept and the run resumes with the same --out",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
