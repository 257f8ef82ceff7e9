"""The `bench` command: parse, call, print.

Exit status: 0 done; 1 a failure while running (a purifier or classifier that broke its contract, out of
memory, a full or read-only disk) — rows already written are kept and a rerun resumes; 2 refused (bad
input, checked before anything is written); 130 interrupted. Every error is one line on stderr;
``bench --debug …`` or ``BENCH_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from benchbench.errors import BenchError, PluginFault, ResourceError, first_line

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _build_parser() -> argparse.ArgumentParser:
    from benchbench.run.presets import DESCRIPTIONS, PRESETS
    from benchbench.models.sigma_modes import DEFAULT_SIGMA_MODE, SIGMA_MODES

    parser = _Parser(prog="bench", description="Compare diffusion purifiers for randomized-smoothing certification.")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error, not just its line (also: BENCH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="certify test images through each purifier, per σ")
    run.add_argument("--purifiers", default="all",
                     help="comma list of name[:key=value...] specs, or 'all' (default: all)")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                     help="protocol defaults; the flags below override them (default: quick). "
                          + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))
    run.add_argument("--dataset", help="dataset name, e.g. digits, cifar10, imagenet64, "
                                       "imagenet[:size=N][:resize=M], imagefolder:PATH (default: digits; a "
                                       "preset may add its source's crop)")
    run.add_argument("--data-dir", help="folder holding the dataset's files (default: $BENCH_DATA_DIR or ./data)")
    run.add_argument("--download", action="store_true", help="let the dataset fetch missing files (needs network)")
    run.add_argument("--sigmas", help="comma list of noise levels σ in image scale [0,1]")
    run.add_argument("--n0", type=int, help="selection samples per image")
    run.add_argument("--n", type=int, help="estimation samples per image")
    run.add_argument("--alpha", type=float, help="failure probability of each certificate")
    run.add_argument("--num-images", type=int, help="how many test images")
    run.add_argument("--skip", type=int, help="stride between test images")
    run.add_argument("--batch-size", type=int,
                     help="rows per network call: noisy samples, or batch ÷ K noisy samples × K votes for a "
                          "voting purifier such as densepure")
    run.add_argument("--seed", type=int, help="run seed: fixes every noise draw")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--classifier", help="classifier reference: digits, FOLDER, hf:ID, timm:NAME[:CKPT], "
                                          "robustbench:NAME, torchscript:PATH (default: the dataset's)")
    run.add_argument("--out", help="run directory (default: results/<preset>-<dataset>-<time>)")
    run.add_argument("--noise-device", choices=["cpu", "device"],
                     help="draw the certification noise on the cpu (default; the same values on every machine) "
                          "or on the run's device (faster on a GPU; the same values on one kind of device)")
    run.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                     help="autocast purifier and classifier (default: fp32, no autocast); counts and bounds "
                          "stay exact")
    run.add_argument("--certify", choices=["fixed", "sequential"],
                     help="fixed (default): Cohen et al.'s CERTIFY, n estimation samples per image; sequential: "
                          "estimation samples in looks of 100, 200, 400, … up to n, stopping once every --radii "
                          "radius is certified or ruled out (Clopper–Pearson at α/looks: each certificate still "
                          "holds with probability ≥ 1 − α; ACR is capped by the grid)")
    run.add_argument("--radii", metavar="R,R,...",
                     help="radius grid of --certify sequential, image scale (default: 0,0.25,0.5,0.75,1)")
    run.add_argument("--shard", metavar="K/N",
                     help="certify only shard K of N (a deterministic 1/N of the work, e.g. a SLURM array task); "
                          "combine the shards' directories with bench merge")
    run.add_argument("--executor", choices=["local", "ray"],
                     help="local (default): this process; ray: tasks on a Ray cluster, rows written here")
    run.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    run.add_argument("--threads", type=int,
                     help="torch threads: per Ray worker on CPU (default: 1), or of this process in a local run "
                          "(default: torch's, one per core; 1 is faster on a CPU shared with other jobs)")
    run.add_argument("--channels-last", action="store_true", default=None,
                     help="networks in channels_last memory format (speed only; recorded in environment.speed)")
    run.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile each network's forward (compile time is paid once per process; "
                          "recorded in environment.speed)")
    run.add_argument("--no-report", action="store_true",
                     help="write rows and the summary only; no quality, report or figures (bench report and "
                          "bench plot write them later)")

    train = sub.add_parser("train", help="train the embedded default models from scratch")
    tsub = train.add_subparsers(dest="what", required=True, parser_class=_Parser)
    helps = {"classifier": "the classifier, on clean images", "ddpm": "the DDPM",
             "distill": "a consistency model, distilled from the DDPM's PF-ODE",
             "finetune": "Consistency Fine-tuning of a distilled model with an LPIPS loss",
             "perceptual": "the perceptual feature network of the digits LPIPS-style distance (SimCLR, no labels)"}
    for what, text in helps.items():
        t = tsub.add_parser(what, help=f"train {text}")
        t.add_argument("--out", required=True, help="new folder to write the model to")
        t.add_argument("--seed", type=int, help="training seed (default: the config's: 0, or 7 for perceptual)")
        t.add_argument("--device", default="cpu")
        t.add_argument("--dataset", default="digits")
        if what == "classifier":
            t.add_argument("--epochs", type=int, help="passes over the training set")
            t.add_argument("--noise-sd", type=float, default=0.0,
                           help="train under Gaussian noise of this σ (image scale; Cohen et al.'s baseline "
                                "classifier for σ); default 0: clean images")
        else:
            t.add_argument("--steps", type=int, help="optimiser steps")
        if what in ("distill", "finetune"):
            t.add_argument("--distance", help="training distance: lpips (the dataset's default), digits-cnn, "
                                              "vgg, alex or l2")
        if what in ("distill", "finetune"):
            t.add_argument("--data-dir", help="folder holding the dataset's files (default: $BENCH_DATA_DIR or ./data)")
            t.add_argument("--batch-size", type=int, help="images per optimiser step")
        if what == "distill":
            t.add_argument("--teacher", help="DDPM reference: folder or hub id (default: the dataset's)")
        if what == "finetune":
            t.add_argument("--base", help="distilled consistency model reference (default: the dataset's)")
            t.add_argument("--anchor-weight", type=float,
                           help="weight of the anchor term toward the distilled model at the levels not "
                                "fine-tuned (default 0: Li et al.'s objective alone; 2 = the former default)")
            t.add_argument("--sigma-mode", choices=SIGMA_MODES,
                           help=f"how f is called at 2σ, as the purifier will (default: {DEFAULT_SIGMA_MODE})")

    from benchbench.train.criteria import CRITERIA

    evaluate = sub.add_parser(
        "evaluate", help="measure the consistency models on the val split and check their acceptance criteria",
        description="consistency: measure a distilled and a fine-tuned consistency model on the val split (the "
                    "test split is never read) and check: " + "; ".join(CRITERIA.values())
                    + ". Exit 1 when a criterion fails. sigma-modes: purification quality on val of both "
                    "models in each sigma_mode (exact, nearest, nearest-log, topup) at "
                    "σ ∈ {0.12, 0.25, 0.3, 0.5, 0.75, 1}.")
    evaluate.add_argument("what", choices=["consistency", "sigma-modes"])
    evaluate.add_argument("--distilled", default="digits", help="consistency model reference")
    evaluate.add_argument("--finetuned", default="digits", help="fine-tuned model reference ('none' to skip)")
    evaluate.add_argument("--device", default="cpu")

    merge = sub.add_parser("merge", help="combine the run directories of one experiment's shards into one run")
    merge.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    merge.add_argument("--out", required=True, help="new directory for the merged run")
    merge.add_argument("--no-report", action="store_true", help="rows and summary only")
    merge.add_argument("--device", help="torch device for quality and the image grid (default: cuda if available)")

    lst = sub.add_parser("list", help="list registered purifiers, datasets or classifier reference forms")
    lst.add_argument("what", choices=["purifiers", "datasets", "classifiers"])

    imp = sub.add_parser("import", help="read Cohen et al.'s or DDS's certify output into a run directory")
    imp.add_argument("format", choices=["cohen", "dds"], help="cohen: correct is 0/1 per row; dds: a running total")
    imp.add_argument("file", metavar="FILE.tsv")
    imp.add_argument("--sigma", type=float, required=True, help="the σ the file was certified at (image scale)")
    imp.add_argument("--out", required=True, help="run directory: an existing run (rows added beside its "
                                                  "purifiers) or a new folder")
    imp.add_argument("--label", help="row label in reports (default: the format name)")
    imp.add_argument("--dataset", help="dataset the file was certified on (recorded; for a new run directory)")
    imp.add_argument("--n", type=int, help="the file's estimation sample count (recorded in each row)")
    imp.add_argument("--alpha", type=float, help="the file's α (recorded; with --n, radii above what n samples "
                                                  "at α can certify are refused; bench report --alpha-aware needs it)")
    _add_reporting(sub)
    _add_convert(sub)
    return parser


def _add_convert(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="turn an original research checkpoint into a folder benchbench loads")
    csub = convert.add_subparsers(dest="source", required=True, parser_class=_Parser)
    openai = csub.add_parser(
        "openai-unet", help="a UNetModel state_dict of improved-diffusion, guided-diffusion or consistency_models "
                            "→ ddpm/sde/pfode/densepure:model= or consistency:model=")
    openai.add_argument("checkpoint", metavar="CHECKPOINT.pt")
    openai.add_argument("--out", required=True, help="new folder to write (a DDPMPipeline- or "
                                                     "ConsistencyModelPipeline-style folder)")
    openai.add_argument("--profile", help="flags of a published file: dds-cifar10, guided-256-uncond, dds-imagenet, "
                                          "guided-64-cond, cm-imagenet64, cm-lsun256")
    openai.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one of the original scripts' flags (image_size, num_channels, …), over the profile; "
                             "repeatable")
    ncsnpp = csub.add_parser(
        "ncsnpp-flax", help="openai/consistency_models_cifar10 (flax NCSN++ CD/CT checkpoint) → consistency:model=",
        description="Convert a checkpoint of openai/consistency_models_cifar10 (the flax training state its "
                    "save_checkpoint writes; its params_ema are converted) into a ConsistencyModelPipeline-layout "
                    "folder for consistency:model=FOLDER. The defaults are configs/cifar10_ve_cd.py's: nf=128, "
                    "ch_mult=2,2,2, num_res_blocks=4, attn_resolutions=16, image_size=32, num_channels=3, "
                    "t_min=0.002, t_max=80, data_std=0.5, rho=7, num_scales=18; weights=params_ema.")
    ncsnpp.add_argument("checkpoint", metavar="CHECKPOINT", help="the flax checkpoint file (e.g. checkpoint_80)")
    ncsnpp.add_argument("--out", required=True, help="new folder to write")
    ncsnpp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value, by the config's own name (repeatable), e.g. --set nf=64")


def _add_reporting(sub: argparse._SubParsersAction) -> None:
    plot = sub.add_parser("plot", help="draw a figure (PNG and SVG) from run directories")
    psub = plot.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    pareto = psub.add_parser("pareto", help="cost vs robustness per purifier and σ, with the Pareto front")
    pareto.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                        help="run directories to combine (default: every run under ./results)")
    pareto.add_argument("--cost", choices=["both", "seconds", "nfe"], default="both",
                        help="x axis: seconds per image, network calls per noisy sample, or both side by side, "
                             "each panel with its own front (default: both)")
    pareto.add_argument("--robustness", choices=["acr", "acc"], default="acr",
                        help="y axis: average certified radius or certified accuracy at --radius (default: acr)")
    pareto.add_argument("--radius", type=float, default=0.5, help="radius for --robustness acc (default: 0.5)")
    pareto.add_argument("--timings", metavar="BENCH.json",
                        help="pytest-benchmark --benchmark-json file: cost = each purifier's mean latency")
    pareto.add_argument("--out", help="output path (default: RUN_DIR/pareto.png for one run, else ./pareto.png)")
    radius = psub.add_parser("radius", help="certified accuracy vs radius, one panel per σ")
    radius.add_argument("run_dir", metavar="RUN_DIR")
    radius.add_argument("--out", help="output path (default: RUN_DIR/radius.png)")
    grid = psub.add_parser("grid", help="clean, noisy and purified images side by side")
    grid.add_argument("run_dir", metavar="RUN_DIR")
    grid.add_argument("--images", type=int, default=4, help="how many of the run's images (default: 4)")
    grid.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    grid.add_argument("--out", help="output path (default: RUN_DIR/grid.png)")

    report = sub.add_parser("report", help="write report.md/.csv/.tex (best σ per radius, Pareto) and print it")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--alpha-aware", type=float, metavar="DELTA",
                        help="add Cohen et al.'s α-aware certified accuracy: with probability ≥ 1 − DELTA at least "
                             "this many certificates are correct (e.g. 0.05)")

    quality = sub.add_parser("quality", help="measure MSE and label preservation of each purifier (quality.csv)")
    quality.add_argument("run_dir", metavar="RUN_DIR")
    quality.add_argument("--copies", type=int, default=8,
                         help="noisy copies per image, at most the run's n0 + n (default: 8)")
    quality.add_argument("--distance", default="lpips",
                         help="perceptual distance: lpips (the dataset's default), digits-cnn, vgg, alex, l2")
    quality.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    compare = sub.add_parser("compare", help="exact McNemar tests between purifiers of a run, Holm-corrected "
                                             "over the pairs")
    compare.add_argument("run_dir", metavar="RUN_DIR")
    compare.add_argument("a", metavar="A", help="purifier label, as in the report")
    compare.add_argument("b", metavar="B", help="purifier label, as in the report")
    compare.add_argument("--pair", nargs=2, action="append", default=[], metavar=("C", "D"),
                         help="another pair to test (repeatable); with several pairs Holm's correction keeps "
                              "the family-wise error ≤ --family-alpha")
    compare.add_argument("--sigma", type=float, required=True, help="noise level σ of the run")
    compare.add_argument("--radius", type=float, default=0.0, help="success = certified at this radius (default: 0)")
    compare.add_argument("--family-alpha", type=float, default=0.05,
                         help="family-wise error rate for 'significant' (default: 0.05)")


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _cmd_run(args: argparse.Namespace) -> int:
    from benchbench.run.runner import RunConfig, run

    from benchbench.run.artifacts import write_run_artifacts

    config = RunConfig.from_args(args)
    result = run(config)
    print(result.summary_markdown)
    for reason in result.failures.values():
        print(f"bench: error: {reason}; that purifier was stopped, the others ran", file=sys.stderr)
    if config.shard:
        print(f"shard {config.shard}: no report; combine the shards with bench merge --out DIR SHARD_DIR...")
    elif len(result.failures) < len(config.purifiers) and not args.no_report:
        artifacts = write_run_artifacts(result.run_dir, device=config.device, skip=result.failures)
        print(f"\n{artifacts.markdown}")
    print(f"\nwrote {result.run_dir}")
    return EXIT_FAILED if result.failures else 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchbench.run.artifacts import write_run_artifacts
    from benchbench.results.rundir import format_summary, merge_runs, missing_shards, write_summary

    out = Path(args.out)
    missing = missing_shards(merge_runs(out, [Path(d) for d in args.run_dirs]))
    if missing:
        print(f"bench: warning: {missing}", file=sys.stderr)
    print(format_summary(write_summary(out)))
    if not args.no_report:
        artifacts = write_run_artifacts(out, device=_device(args.device))
        print(f"\n{artifacts.markdown}")
    print(f"\nwrote {out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from benchbench.results import plots
    from benchbench.errors import InvalidArgument

    if args.figure == "pareto":
        dirs = [Path(d) for d in args.run_dirs] or sorted(p.parent for p in Path("results").glob("*/config.json"))
        if not dirs:
            raise InvalidArgument("no RUN_DIR given and no run found under ./results")
        out = args.out or (dirs[0] / "pareto.png" if len(dirs) == 1 else Path("pareto.png"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = plots.plot_pareto(dirs, out, cost=args.cost, robustness=args.robustness, radius=args.radius,
                                      timings=args.timings)
        for w in caught:
            print(f"bench: warning: {w.message}", file=sys.stderr)
    elif args.figure == "radius":
        paths = plots.plot_radius(args.run_dir, args.out or Path(args.run_dir) / "radius.png")
    else:
        images = plots.grid_from_run(args.run_dir, args.images, _device(args.device))
        paths = plots.plot_grid(images, args.out or Path(args.run_dir) / "grid.png")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from benchbench.results.report import coverage_warning, format_markdown, write_report

    table = write_report(args.run_dir, alpha_aware=args.alpha_aware)
    warning = coverage_warning(table)
    if warning:
        print(f"bench: warning: {warning}", file=sys.stderr)
    print(format_markdown(table))
    print(f"\nwrote report.md, report.csv, report.tex in {args.run_dir}")
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from benchbench.results.quality import write_quality

    print(write_quality(args.run_dir, copies=args.copies, device=_device(args.device),
                        distance=args.distance).to_markdown(index=False))
    print(f"\nwrote quality.csv in {args.run_dir} (bench report merges it)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from benchbench.results.report import compare_pairs, load_run_rows

    pairs = [(args.a, args.b), *map(tuple, args.pair)]
    verdicts = compare_pairs(load_run_rows(args.run_dir), pairs, args.sigma, args.radius, args.family_alpha)
    for verdict in verdicts:
        print(verdict)
    if len(pairs) > 1:
        kept = [f"{v.test.a} vs {v.test.b}" for v in verdicts if v.significant]
        print(f"Holm over {len(pairs)} pairs at family-wise α = {args.family_alpha:g}: "
              f"{'; '.join(kept) if kept else 'no pair'} survive{'' if len(kept) > 1 else 's'}")
    for verdict in verdicts:
        if verdict.test.warning():
            print(f"bench: warning: {verdict.test.warning()}", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json
    import math

    from benchbench.errors import InvalidArgument

    if args.what == "classifier":
        from benchbench.train.classifier import ClassifierConfig, train_classifier

        if not (args.noise_sd >= 0 and math.isfinite(args.noise_sd)):
            raise InvalidArgument(f"--noise-sd must be a finite number >= 0, got {args.noise_sd}")
        cfg = ClassifierConfig(dataset=args.dataset, noise_sd=args.noise_sd)
        _override(cfg, epochs=args.epochs, seed=args.seed)
        manifest = train_classifier(args.out, cfg, device=args.device)
    elif args.what == "ddpm":
        from benchbench.train.ddpm import DDPMConfig, train_ddpm

        cfg = DDPMConfig(dataset=args.dataset)
        _override(cfg, steps=args.steps, seed=args.seed)
        manifest = train_ddpm(args.out, cfg, device=args.device)
    elif args.what == "perceptual":
        from benchbench.train.perceptual import PerceptualConfig, train_perceptual

        cfg = PerceptualConfig(dataset=args.dataset)
        _override(cfg, steps=args.steps, seed=args.seed)
        manifest = train_perceptual(args.out, cfg, device=args.device)
    elif args.what == "distill":
        from benchbench.train.distill import DistillConfig, train_distill

        cfg = DistillConfig(dataset=args.dataset)
        _override(cfg, steps=args.steps, seed=args.seed, distance=args.distance, teacher=args.teacher,
                  data_dir=args.data_dir, batch_size=args.batch_size)
        manifest = train_distill(args.out, cfg, device=args.device)
    else:
        from benchbench.train.finetune import FinetuneConfig, train_finetune

        cfg = FinetuneConfig(dataset=args.dataset)
        _override(cfg, steps=args.steps, seed=args.seed, distance=args.distance, base=args.base,
                  anchor_weight=args.anchor_weight, sigma_mode=args.sigma_mode, data_dir=args.data_dir,
                  batch_size=args.batch_size)
        if cfg.anchor_weight < 0 or not math.isfinite(cfg.anchor_weight):
            raise InvalidArgument(f"--anchor-weight must be a finite number >= 0, got {cfg.anchor_weight}")
        manifest = train_finetune(args.out, cfg, device=args.device)
    print(json.dumps(manifest["metrics"], indent=2))
    print(f"wrote {args.out} in {manifest['train_seconds']} s")
    return 0


def _override(config: object, **values: object) -> None:
    """Set the config fields the user gave on the command line."""
    for key, value in values.items():
        if value is not None:
            setattr(config, key, value)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from benchbench.train.acceptance import consistency_quality_report

    if args.what == "sigma-modes":
        import pandas as pd

        from benchbench.train.acceptance import sigma_mode_table

        refs = [(args.distilled, "consistency")] + ([] if args.finetuned == "none" else [(args.finetuned,
                                                                                          "consistency-ft")])
        table = pd.DataFrame(sigma_mode_table(refs, device=args.device))
        print(table.to_markdown(index=False, floatfmt=".4g"))
        print("\nval split; level_vs_2sigma = noise level the model is given or assumes / 2σ − 1; lpips = the "
              "dataset's LPIPS-style distance to the clean image; accuracy = the classifier on the purified images")
        return 0
    finetuned = None if args.finetuned == "none" else args.finetuned
    report = consistency_quality_report(args.distilled, finetuned, device=args.device)
    print(json.dumps(report, indent=2, default=float))
    print("\nmeasured on the val split")
    for name, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {report['criteria'][name]}")
    return 0 if all(report["checks"].values()) else 1


def _cmd_list(args: argparse.Namespace) -> int:
    import inspect

    if args.what == "datasets":
        from benchbench.data.dataset import available_datasets, dataset_info

        for name in available_datasets():
            info = dataset_info(name)
            print(f"{name}  classifier={info.default_classifier}  ddpm={info.default_ddpm}  "
                  f"consistency={info.default_consistency}")
        return 0
    if args.what == "classifiers":
        from benchbench.models.classifiers import CLASSIFIERS

        for name in CLASSIFIERS.names():
            doc = inspect.getdoc(CLASSIFIERS.get(name)) or ""
            print(f"{name}:…\n    {doc.splitlines()[0] if doc else ''}")
        print("FOLDER or embedded name (digits)\n    benchbench's SmallCNN")
        return 0
    from benchbench.registry import available_purifiers, describe, purifier_params

    for name in available_purifiers():
        params = ", ".join(f"{p.name}: {p.kind.__name__} = {p.default!r}" for p in purifier_params(name))
        print(f"{name}({params})\n    {describe(name)}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    import warnings

    from benchbench.results.importer import import_published

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = import_published(args.file, args.format, sigma=args.sigma, out=args.out, label=args.label,
                                dataset=args.dataset, n=args.n, alpha=args.alpha)
    for w in caught:
        print(f"bench: warning: {w.message}", file=sys.stderr)
    print(f"wrote {path} (and config.json, summary) in {args.out}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.source == "openai-unet":
        from benchbench.models.openai_unet import convert
        from benchbench.models.store import CONVERSION

        out = convert(args.checkpoint, args.out, profile=args.profile, settings=args.set)
        print(f"wrote {out} (diffusers folder; {CONVERSION} records the source and its timestep scale)")
        return 0
    from benchbench.models.ncsnpp_convert import convert_ncsnpp_flax

    out = convert_ncsnpp_flax(args.checkpoint, args.out, args.set)
    print(f"wrote {out}: run it with --purifiers consistency:model={out}")
    return 0


COMMANDS = {"run": _cmd_run, "merge": _cmd_merge, "train": _cmd_train, "list": _cmd_list, "plot": _cmd_plot,
            "report": _cmd_report, "quality": _cmd_quality, "compare": _cmd_compare, "evaluate": _cmd_evaluate,
            "import": _cmd_import, "convert": _cmd_convert}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bench` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("BENCH_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except (PluginFault, ResourceError) as exc:
        return _fail(str(exc), EXIT_FAILED, debug)
    except BenchError as exc:
        return _fail(str(exc), EXIT_USAGE, debug)
    except KeyboardInterrupt:
        print("bench: interrupted; rows written so far are kept and the run resumes with the same --out",
              file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only or vanished file system, permissions
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}; rows written so far are kept and a rerun resumes",
                     EXIT_FAILED, debug)
    except MemoryError:
        return _fail("out of memory; use a smaller --batch-size", EXIT_FAILED, debug)
    except Exception as exc:  # a bug: still one line, the traceback on request
        return _fail(f"unexpected {type(exc).__name__}: {first_line(exc, '')} (bench --debug shows the traceback)",
                     EXIT_FAILED, debug)


def _fail(message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"bench: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
