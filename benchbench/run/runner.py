"""The runner: the one place that knows purifiers, the classifier and certification together.

For each purifier configuration, each σ and each selected test image it certifies the smoothed
classifier g(x) = argmax_c P(classifier(purifier(x + δ, σ)) = c) and appends one row to that pair's TSV.
Every random draw is keyed by what it is for (:mod:`benchbench.smoothing.noise`): the noise of image i at σ by
(run seed, i, σ), a stochastic purifier's noise for a copy by (run seed, i, σ, copy). So every purifier
sees the same noisy copies (a paired comparison) and no count depends on the batch size.

:func:`prepare` makes every check (protocol, device, purifiers, σ against each model, each purifier's
output on a first batch, memory for a full batch, the output directory and any rows already there) and
writes nothing; only then does :func:`run` create files.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchbench.smoothing.certify import ABSTAIN, CERTIFY_MODES, Certificate, NoisyCopies, SequentialRule, \
    certificate_from_counts, certification_batches, check_protocol, check_radii, noisy_batches
from benchbench.data.dataset import ImageDataset, dataset_info, default_data_dir, get_dataset
from benchbench.data.published import devkit_order_refusal
from benchbench.run.environment import environment
from benchbench.errors import BenchError, InvalidArgument, PluginFault, ResourceError, first_line, \
    plugin_failure
from benchbench.run.executors import EXECUTORS, check_reachable, ray_cluster, run_local, run_ray
from benchbench.results.lock import RunLock, check_unlocked
from benchbench.models.classifiers import load_classifier
from benchbench.models.store import fingerprint
from benchbench.smoothing.nfe import ForwardCounter
from benchbench.run.plan import Shard, Task, images_per_task, make_tasks, shard_units, units
from benchbench.run.presets import preset_values
from benchbench.run.speed import apply_speed_options, speed_record
from benchbench.registry import Purifier, PurifierSpec, get_purifier, parse_purifier_list
from benchbench.run.resources import MemoryModel, check_batch_memory, check_device, check_output_location, \
    measure_peak
from benchbench.results.rundir import NOISE_SCHEME, RowWriter, check_run_dir, format_summary, open_run_dir, tsv_name, \
    write_summary
from benchbench.smoothing.noise import CopyNoise, check_seed, noise_generator, sigma_key
from benchbench.smoothing.contract import OutputError, check_logits, checked_purify, majority_vote

NOISE_DEVICES = ("cpu", "device")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Noisy copies of the larger of the two pre-run calls whose memory peaks size a batch.
MEMORY_PROBE = 8


@dataclass
class RunConfig:
    """Everything a run needs. σ is in image scale ([0, 1] pixels); radii come out in the same scale."""

    purifiers: list[PurifierSpec]
    dataset: str = "digits"
    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    num_images: int | None = 500  # None: every image the stride gives (a preset's "the whole test set")
    skip: int | None = None
    batch_size: int = 1000
    seed: int = 0
    device: str = "cpu"
    classifier: str | None = None
    out: str | None = None
    preset: str = "custom"
    data_dir: str | None = None    # where the dataset's files live (default: $BENCH_DATA_DIR or ./data)
    download: bool = False         # let a dataset fetch its files when they are missing
    noise_device: str = "cpu"  # where certification noise is drawn: "cpu" or "device" (the run's device)
    precision: str = "fp32"  # autocast of purifier and classifier: fp32 (none), bf16 or fp16
    shard: str | None = None  # "K/N": run only that deterministic part of the units
    executor: str = "local"  # "local" or "ray"
    address: str | None = None  # Ray cluster address (None: a local cluster)
    # torch threads: of each Ray worker on CPU (default 1), or of this process in a local run (default:
    # torch's, one per core; 1 is faster on a CPU shared with other jobs, see README "The CPU path")
    threads: int | None = None
    channels_last: bool = False  # networks in channels_last memory format (speed only: environment)
    compile: bool = False  # networks' forward through torch.compile (speed only: environment)
    certify: str = "fixed"  # "fixed" (Cohen et al.'s CERTIFY) or "sequential" (stop when the radius grid is decided)
    radii: tuple[float, ...] | None = None  # the grid of a sequential run (None: DEFAULT_RADII)

    def __post_init__(self) -> None:
        dataset_info(self.dataset)  # unknown dataset → UnknownName
        if not self.sigmas:
            raise InvalidArgument("no sigma given")
        for sigma in self.sigmas:
            check_protocol(sigma=sigma)
        keys: dict[int, float] = {}
        for sigma in self.sigmas:
            if sigma_key(sigma) in keys:
                other = keys[sigma_key(sigma)]
                same = f"{sigma:g} twice" if other == sigma else f"{other!r} and {sigma!r}, equal to 6 decimals"
                raise InvalidArgument(f"sigma listed twice: {same}")
            keys[sigma_key(sigma)] = sigma
        check_protocol(sigma=1.0, n0=self.n0, n=self.n, alpha=self.alpha)
        for name in ("num_images", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidArgument(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.skip is not None and self.skip < 1:
            raise InvalidArgument(f"skip must be >= 1, got {self.skip}")
        try:
            check_seed(self.seed)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if self.noise_device not in NOISE_DEVICES:
            raise InvalidArgument(f"noise-device must be one of {', '.join(NOISE_DEVICES)}, got {self.noise_device!r}")
        if self.precision not in PRECISIONS:
            raise InvalidArgument(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.executor not in EXECUTORS:
            raise InvalidArgument(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgument(f"threads must be >= 1, got {self.threads}")
        if self.certify not in CERTIFY_MODES:
            raise InvalidArgument(f"certify must be one of {', '.join(CERTIFY_MODES)}, got {self.certify!r}")
        if self.radii is not None:
            if self.certify != "sequential":
                # fixed certifies every radius at once; a grid there would be recorded but change nothing
                raise InvalidArgument("--radii is the grid of --certify sequential; fixed certification has none")
            self.radii = check_radii(self.radii)

    @property
    def rule(self) -> SequentialRule | None:
        """The stopping rule of a sequential run (its grid and looks up to n); None for fixed."""
        if self.certify != "sequential":
            return None
        return SequentialRule.for_protocol(self.n, *(() if self.radii is None else (self.radii,)))

    @property
    def first_look(self) -> int:
        """Estimation samples every image gets in any mode: the first look (sequential) or n (fixed)."""
        rule = self.rule
        return self.n if rule is None else rule.looks[0]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        """Start from the preset, override with every flag given, and validate."""
        values = preset_values(args.preset, getattr(args, "dataset", None))
        for key in ("n0", "n", "alpha", "num_images", "skip", "batch_size", "seed", "classifier", "out",
                    "data_dir"):
            if getattr(args, key, None) is not None:
                values[key] = getattr(args, key)
        if args.sigmas is not None:
            values["sigmas"] = tuple(_parse_float(s, "sigma") for s in args.sigmas.split(",") if s.strip())
        values["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        values["download"] = bool(getattr(args, "download", False))
        for key in ("noise_device", "precision", "shard", "executor", "address", "threads", "channels_last",
                    "compile",
                    "certify"):
            if getattr(args, key, None) is not None:
                values[key] = getattr(args, key)
        if getattr(args, "radii", None) is not None:
            values["radii"] = tuple(_parse_float(r, "radius") for r in args.radii.split(",") if r.strip())
        return cls(purifiers=parse_purifier_list(args.purifiers), preset=args.preset, **values)

    def image_indices(self, test_size: int) -> list[int]:
        """Test-set indices to certify: every ``skip``-th, at most ``num_images`` (None: no cap); when skip is
        None, the stride that spreads num_images over the test set (the whole set when it is smaller)."""
        stride = self.skip or (1 if self.num_images is None else max(1, test_size // self.num_images))
        return list(range(0, test_size, stride))[: self.num_images]


def _parse_float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be a number, got {text!r}") from None


def check_classifier(classifier: torch.nn.Module, ref: str, test: Any) -> None:
    """One forward pass on a test image, before anything is written: the classifier must give one logit
    per class of the dataset."""
    device = next(iter(classifier.parameters()), torch.empty(0)).device
    with torch.no_grad():
        try:
            out = classifier(test.images[:1].to(device))
        except SystemExit as exc:
            raise BenchError(f"classifier {ref!r} {plugin_failure(exc)} on its first batch") from None
        except Exception as exc:  # a network built for other inputs fails in its own way
            raise BenchError(f"classifier {ref!r} cannot take {_image_shape(test)} images of dataset "
                             f"{test.name!r}: {first_line(exc, repr(exc))}") \
                from None
    if out.dim() != 2 or out.shape[1] != test.num_classes:
        raise BenchError(f"classifier {ref!r} gives {tuple(out.shape)[1:]} outputs per image; dataset "
                         f"{test.name!r} has {test.num_classes} classes")


def check_purifier(purifier: Any, label: str, test: Any) -> None:
    """A purifier that declares the image shape its network takes (``image_shape``) or its number of
    classes (``num_classes``) must match the dataset, before anything is written."""
    shape = getattr(purifier, "image_shape", None)
    if shape is not None and tuple(shape) != tuple(test.images.shape[1:]):
        raise BenchError(f"purifier {label}: its model takes images of shape {tuple(shape)}; dataset {test.name!r} "
                         f"has {_image_shape(test)}")
    classes = getattr(purifier, "num_classes", None)
    if classes is not None and classes != test.num_classes:
        raise BenchError(f"purifier {label}: its model is conditioned on {classes} classes; dataset "
                         f"{test.name!r} has {test.num_classes}")


def _image_shape(test: Any) -> tuple[int, ...]:
    return tuple(test.images.shape[1:])


@dataclass
class RunResult:
    run_dir: Path
    resumed: bool
    summary_markdown: str
    failures: dict[str, str] = field(default_factory=dict)  # purifier label → the one-line reason it stopped


def _distance_record(dataset: str) -> dict[str, str]:
    from benchbench.models.perceptual import default_perceptual, distance_record

    return distance_record(default_perceptual(dataset))


@dataclass
class Context:
    """The models and data a run certifies with, on one device: what a task needs, wherever it runs."""

    config: RunConfig
    device: torch.device
    test: ImageDataset
    indices: list[int]
    classifier: torch.nn.Module
    classifier_ref: str
    purifiers: dict[str, Purifier]
    # (purifier label, σ) → the classifier that purifier is certified with instead (the Cohen et al. baseline)
    own_refs: dict[tuple[str, float], str] = field(default_factory=dict)
    own_classifiers: dict[tuple[str, float], torch.nn.Module] = field(default_factory=dict)

    @property
    def noise_device(self) -> torch.device:
        return self.device if self.config.noise_device == "device" else torch.device("cpu")


@dataclass
class Prepared(Context):
    """A run with every check passed and nothing written yet."""

    run_dir: Path = Path()
    run_config: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def build_context(config: RunConfig, device: torch.device) -> Context:
    """Load the dataset, the classifier and every purifier of ``config`` on ``device``."""
    info = dataset_info(config.dataset)
    test = get_dataset(config.dataset, "test", data_dir=config.data_dir, download=config.download)
    # Every run scores an ImageNet classifier (and maybe a class-conditional model) against these labels.
    refusal = devkit_order_refusal(test)
    if refusal:
        raise InvalidArgument(refusal)
    classifier_ref = config.classifier or info.default_classifier
    if classifier_ref is None:
        raise InvalidArgument(f"dataset {config.dataset!r} has no default classifier; pass --classifier")
    classifier = load_classifier(classifier_ref, device, config.dataset)
    check_classifier(classifier, classifier_ref, test)
    purifiers = {
        spec.label: get_purifier(spec.name, **spec.params, device=str(device), dataset=config.dataset,
                                 classifier=classifier)
        for spec in config.purifiers
    }
    for label, purifier in purifiers.items():
        check_purifier(purifier, label, test)
    # A purifier with classifier_for(σ) (the Cohen et al. baseline) is certified with its own classifier
    # at each σ; resolved here, so a missing one is refused before anything is written.
    own_refs = {(label, sigma): p.classifier_for(sigma) for label, p in purifiers.items()
                if hasattr(p, "classifier_for") for sigma in config.sigmas}
    own_classifiers = {}
    for key, ref in own_refs.items():
        own_classifiers[key] = load_classifier(ref, device, config.dataset)
        check_classifier(own_classifiers[key], ref, test)
    if config.channels_last or config.compile:
        nets = [classifier, *own_classifiers.values(), *(n for p in purifiers.values() for n in (p.networks or ()))]
        apply_speed_options(nets, channels_last=config.channels_last, compile=config.compile)
    return Context(config, device, test, config.image_indices(len(test)), classifier, classifier_ref, purifiers,
                   own_refs, own_classifiers)


def prepare(config: RunConfig) -> Prepared:
    """Build and check everything a run needs, writing nothing: raises a BenchError on the first problem."""
    device = check_device(config.device)
    if config.threads and config.executor == "local":
        torch.set_num_threads(config.threads)  # before environment() records it
    run_dir = Path(config.out or f"results/{config.preset}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_location(run_dir)
    check_unlocked(run_dir)
    ctx = build_context(config, device)
    if config.skip is not None and config.num_images is not None and len(ctx.indices) < config.num_images:
        raise InvalidArgument(f"--skip {config.skip} over the {len(ctx.test):,} test images gives {len(ctx.indices)} "
                              f"images, not the {config.num_images} asked for; lower --skip or --num-images")
    files = [
        {"purifier": spec.label, "sigma": sigma, "file": tsv_name(spec.label, sigma)}
        for spec in config.purifiers
        for sigma in config.sigmas
    ]
    experiment = {
        "dataset": config.dataset,
        "split": "test",
        "image_indices": ctx.indices,
        "num_classes": ctx.test.num_classes,
        "purifiers": [
            {"label": s.label, "name": s.name, "params": s.params,
             "model": getattr(ctx.purifiers[s.label], "fingerprint", None),
             **({"classifiers": {f"{sg:g}": {"ref": ref, "fingerprint": fingerprint(ref, "classifier")}
                                 for (lab, sg), ref in ctx.own_refs.items() if lab == s.label}}
                if hasattr(ctx.purifiers[s.label], "classifier_for") else {})}
            for s in config.purifiers
        ],
        "sigmas": list(config.sigmas),
        "n0": config.n0,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "noise": NOISE_SCHEME,
        # Both change noise values or network outputs, so rows computed otherwise must not be mixed in.
        "noise_device": ctx.noise_device.type,
        "precision": config.precision,
        "classifier": {"ref": ctx.classifier_ref,
                       "fingerprint": getattr(ctx.classifier, "fingerprint", None)
                       or fingerprint(ctx.classifier_ref, "classifier")},
        # what the data is (e.g. the official release or not); where it lies is environment, not experiment
        "data": {k: v for k, v in ctx.test.meta.items() if k != "source"},
        # what the data holds: resuming or merging with other images or labels (another --data-dir) is refused
        "data_hash": ctx.test.content_hash(ctx.indices),
    }
    rule = config.rule
    if rule is not None:
        # Only a sequential run records its mode, so a fixed run's config is what it always was (and old
        # fixed runs resume); a resume in the other mode differs here and is refused like any other change.
        experiment["certification"] = {"mode": "sequential", "radii": list(rule.radii), "looks": list(rule.looks),
                                       "look_alpha": "alpha / len(looks) (Clopper-Pearson, union bound)"}
    extra: dict[str, Any] = {"preset": config.preset, "batch_size": config.batch_size, "executor": config.executor,
                             "data_dir": str(Path(config.data_dir or default_data_dir()).resolve()),
                             "data_source": ctx.test.meta.get("source"),
                             # what quality.csv's LPIPS-style distance is built on (not the certified classifier)
                             "perceptual_distance": _distance_record(config.dataset),
                             "speed": speed_record(config.channels_last, config.compile)}
    if config.shard:
        extra["shard"] = str(Shard.parse(config.shard))
    run_config = {"experiment": experiment, "environment": environment(device, **extra), "files": files}
    resumed = check_run_dir(run_dir, run_config)
    p = Prepared(**vars(ctx), run_dir=run_dir, run_config=run_config, resumed=resumed)
    for spec in config.purifiers:
        for sigma in config.sigmas:
            _preflight(p, spec.label, sigma)
    return p


def autocast(ctx: Context):
    """The run's autocast context (disabled for fp32): the precision every network call of the run uses."""
    dtype = PRECISIONS[ctx.config.precision]
    return torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _preflight(p: Prepared, label: str, sigma: float) -> None:
    """Run the purifier and classifier on noisy copies of the first image: σ against the model, the outputs
    against their contract, and the memory a full batch needs (:func:`network_memory`). Any failure
    refuses the run."""
    try:
        net, step = network_memory(p, label, sigma)
    except PluginFault as exc:
        raise InvalidArgument(f"{exc} (checked before the run; nothing written)") from exc
    rows = min(p.config.batch_size, max(p.config.n0, p.config.n) * images_per_task(p.config.n0, p.config.first_look,
                                                                                    p.config.batch_size))
    x = p.test.images[p.indices[0]]
    harness = 3 * x.numel() * x.element_size()  # per copy of the task batch: noise, noisy copy, concatenation
    # The networks see at most ``step`` copies per call, K rows each; the harness holds all ``rows`` at once.
    need = net.need(min(rows, step)) + harness * rows
    check_batch_memory(MemoryModel(net.fixed, -(-(need - net.fixed) // rows)), rows, p.device,
                       f"purifier {label!r} at σ={sigma:g}")


def network_memory(ctx: Context, label: str, sigma: float) -> tuple[MemoryModel, int]:
    """The memory one :func:`_classify` call on k noisy copies needs, as ``MemoryModel.need(k)``, and the
    most copies the harness passes per call (``batch_size // votes``). Calls the purifier and classifier on
    copies of the first image, so a purifier or output fault raises :class:`PluginFault`.

    Measured, not guessed (:func:`benchbench.run.resources.measure_peak`): a first, unmeasured call on 2 copies
    checks the contracts and lets one-time allocations happen (weight packing, an autocast weight cache);
    then the peaks of a call on 2 and one on ``MEMORY_PROBE`` copies give a line, extrapolated to the run's
    batch. A voting purifier's K samples per copy are inside what is measured, so they are counted once."""
    idx = ctx.indices[0]
    x = ctx.test.images[idx].to(ctx.device)
    gen = noise_generator(ctx.config.seed, idx, sigma, device=ctx.noise_device)
    step = max(1, ctx.config.batch_size // getattr(ctx.purifiers[label], "votes", 1))
    sizes = (min(2, step), min(MEMORY_PROBE, step))
    batch = next(noisy_batches(x, sizes[1], sigma=sigma, batch_size=sizes[1], generator=gen))

    def call(k: int) -> torch.Tensor:
        return _classify(ctx, label, sigma, batch[:k], [idx] * k, list(range(k)))

    with torch.inference_mode():
        call(sizes[0])
        peaks = tuple(measure_peak(lambda k=k: call(k), ctx.device)[1] for k in sizes)
    return MemoryModel.fit(sizes, peaks), step


def _classify(ctx: Context, label: str, sigma: float, batch: torch.Tensor, idx: list[int],
              copies: list[int]) -> torch.Tensor:
    """Labels (B,) of the smoothed pipeline for a batch whose row j is noisy copy ``copies[j]`` of image
    ``idx[j]``: purify (with each copy's own noise when stochastic), check, classify, check, vote.

    A purifier with ``votes = K`` returns K rows per input, so it is given at most ``batch_size // K`` inputs
    at a time: the networks never see more than the run's batch size of rows. (Measured for ``densepure``,
    K = 5, on the 2-core CPU: 1,000 rows per call certified a digit 1.31× faster than 5,000; the rows are
    the same, since every copy's noise is its own.)"""
    step = max(1, ctx.config.batch_size // getattr(ctx.purifiers[label], "votes", 1))
    labels = [_classify_chunk(ctx, label, sigma, batch[s : s + step], idx[s : s + step], copies[s : s + step])
              for s in range(0, len(batch), step)]
    return torch.cat(labels) if len(labels) > 1 else labels[0]


def _classify_chunk(ctx: Context, label: str, sigma: float, batch: torch.Tensor, idx: list[int],
                    copies: list[int]) -> torch.Tensor:
    """:func:`_classify` on at most one network batch."""
    purifier = ctx.purifiers[label]
    classifier = ctx.own_classifiers.get((label, sigma), ctx.classifier)
    classifier_ref = ctx.own_refs.get((label, sigma), ctx.classifier_ref)
    votes = getattr(purifier, "votes", 1)
    noise = CopyNoise(ctx.config.seed, sigma, idx, copies, device=ctx.noise_device) \
        if getattr(purifier, "stochastic", False) else None

    def where(row: int | None) -> str:
        return f"purifier {label!r} at σ={sigma:g}, image {idx[row or 0]}"

    with autocast(ctx):
        try:
            out = checked_purify(purifier, batch, sigma, noise)
        except OutputError as exc:
            raise PluginFault(f"{where(exc.row)}: {exc.reason}") from None
        except (Exception, SystemExit) as exc:  # a plugin's bug or refusal: one line naming it, σ and image
            _raise_if_oom(exc, where(None))
            raise PluginFault(f"{where(None)} {plugin_failure(exc)}") from exc
        try:
            logits = classifier(out)
        except (Exception, SystemExit) as exc:
            _raise_if_oom(exc, where(None))
            raise PluginFault(f"classifier {classifier_ref!r} on {where(None)} {plugin_failure(exc)}") from exc
    try:
        logits = check_logits(logits, len(out), ctx.test.num_classes)
    except OutputError as exc:
        row = None if exc.row is None else exc.row // votes
        raise PluginFault(f"classifier {classifier_ref!r} on {where(row)}: {exc.reason}") from None
    return majority_vote(logits.argmax(1), votes, ctx.test.num_classes)


def _raise_if_oom(exc: BaseException, where: str) -> None:
    """An allocator failure (CUDA or CPU) becomes one ResourceError line that says what to change."""
    text = str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
            "can't allocate memory" in text:
        raise ResourceError(f"{where}: out of memory ({first_line(exc, '(no message)')[:120]}); "
                            "use a smaller --batch-size") \
            from None


class _Packer:
    """Packs the noisy copies of one task's images into batches of the run's batch size, classifies each
    full batch, and adds its labels to ``counts[image][phase]`` (phase 0: selection, 1: estimation)."""

    def __init__(self, ctx: Context, task: Task, counts: dict[int, list[torch.Tensor]]):
        self.ctx, self.task, self.counts = ctx, task, counts
        self.parts: list = []
        self.have = 0

    def add(self, idx: int, phase: int, copy: int, batch: torch.Tensor) -> None:
        """Copies ``copy`` … of image ``idx`` in ``phase``; classified once a batch is full."""
        size = self.ctx.config.batch_size
        while len(batch):
            take = min(len(batch), size - self.have)
            self.parts.append((idx, phase, copy, batch[:take]))
            self.have += take
            batch, copy = batch[take:], copy + take
            if self.have == size:
                self.flush()

    def flush(self) -> None:
        """Classify what is pending (a batch, or less at the end of a look)."""
        if not self.parts:
            return
        parts, self.parts, self.have = self.parts, [], 0
        batch = torch.cat([b for *_, b in parts]) if len(parts) > 1 else parts[0][3]
        rows_idx = [i for i, _, _, b in parts for _ in range(len(b))]
        rows_copy = [c + k for _, _, c, b in parts for k in range(len(b))]
        labels = _classify(self.ctx, self.task.label, self.task.sigma, batch, rows_idx, rows_copy)
        labels = labels.to("cpu", torch.int64)
        start = 0
        for idx, phase, _, b in parts:
            self.counts[idx][phase] += torch.bincount(labels[start : start + len(b)],
                                                      minlength=self.ctx.test.num_classes)
            start += len(b)


def certify_task(ctx: Context, task: Task) -> list[dict[str, Any]]:
    """The rows of one task: CERTIFY for each of its images (Cohen et al.'s fixed protocol, or the run's
    sequential rule), their noisy copies packed together into batches of the run's batch size (so a small n
    still fills a batch).

    Each image's copies are the ones :func:`benchbench.smoothing.certify.certify` (or ``certify_sequential``)
    would draw from its generator (the same blocks), and a stochastic purifier's noise is keyed per copy, so
    the counts are those of certifying the images one by one, in any packing. ``time`` is the task's seconds
    split over its images in proportion to the noisy samples each drew (evenly, for fixed); ``nfe`` the
    task's network rows per noisy sample drawn; ``n`` the estimation samples each image used.
    """
    config, rule = ctx.config, ctx.config.rule
    counts = {idx: [torch.zeros(ctx.test.num_classes, dtype=torch.int64) for _ in range(2)] for idx in task.indices}
    packer = _Packer(ctx, task, counts)
    start_time = time.perf_counter()
    with ForwardCounter(ctx.purifiers[task.label].networks) as counter, torch.inference_mode():
        used = _fixed(ctx, task, packer) if rule is None else _sequential(ctx, task, packer, rule)
    seconds = time.perf_counter() - start_time
    drawn = {idx: config.n0 + used[idx] for idx in task.indices}
    nfe = counter.rows / sum(drawn.values())
    rows = []
    for idx in task.indices:
        true_label = int(ctx.test.labels[idx])
        sel, est = counts[idx][0].numpy(), counts[idx][1].numpy()
        cert: Certificate = certificate_from_counts(sel, est, sigma=task.sigma, alpha=config.alpha) \
            if rule is None else rule.certificate(sel, est, sigma=task.sigma, alpha=config.alpha)
        share = 1 / len(task.indices) if rule is None else drawn[idx] / sum(drawn.values())
        rows.append({"idx": idx, "label": true_label, "predict": cert.prediction, "radius": cert.radius,
                     "correct": int(cert.prediction == true_label and cert.prediction != ABSTAIN),
                     "time": seconds * share, "pa_lower": cert.pa_lower, "nfe": nfe, "n": used[idx]})
    return rows


def _fixed(ctx: Context, task: Task, packer: _Packer) -> dict[int, int]:
    """Cohen et al.'s protocol: every image's n0 + n copies, image after image. Returns n per image."""
    config = ctx.config
    for idx in task.indices:
        x = ctx.test.images[idx].to(ctx.device)
        gen = noise_generator(config.seed, idx, task.sigma, device=ctx.noise_device)
        copy = 0
        for batch in certification_batches(x, sigma=task.sigma, n0=config.n0, n=config.n,
                                           batch_size=config.batch_size, generator=gen):
            packer.add(idx, int(copy >= config.n0), copy, batch)
            copy += len(batch)
    packer.flush()
    return {idx: config.n for idx in task.indices}


def _top_count(counts: list[torch.Tensor]) -> int:
    """n_A so far: the estimation count of the top selection class (ties: the lowest, as CERTIFY picks)."""
    return int(counts[1][int(counts[0].numpy().argmax())])


def _sequential(ctx: Context, task: Task, packer: _Packer, rule: SequentialRule) -> dict[int, int]:
    """The sequential rule for every image of the task in lockstep: selection and the first look for all,
    then each later look for the images still undecided, packed together. Returns the estimation samples
    each image used. Each image's two phases are two :class:`NoisyCopies` objects on its one generator, the
    selection taken whole before any estimation copy, as fixed draws them: the first m estimation copies are
    fixed's."""
    config = ctx.config
    streams = {}
    for idx in task.indices:
        x = ctx.test.images[idx].to(ctx.device)
        gen = noise_generator(config.seed, idx, task.sigma, device=ctx.noise_device)
        streams[idx] = (NoisyCopies(x, config.n0, sigma=task.sigma, generator=gen),
                        NoisyCopies(x, rule.n, sigma=task.sigma, generator=gen))

    def draw(idx: int, phase: int, upto: int) -> None:
        stream = streams[idx][phase]
        while stream.taken < upto:
            copy = stream.taken + (config.n0 if phase else 0)
            packer.add(idx, phase, copy, stream.take(min(config.batch_size, upto - stream.taken)))

    active = list(task.indices)
    for k, look in enumerate(rule.looks):
        for idx in active:
            if k == 0:
                draw(idx, 0, config.n0)
            draw(idx, 1, look)
        packer.flush()  # every active image's counts are complete at this look
        active = [idx for idx in active
                  if not rule.decided(_top_count(packer.counts[idx]), look,
                                      sigma=task.sigma, alpha=config.alpha)]
        if not active:
            break
    return {idx: streams[idx][1].taken for idx in task.indices}


def run(config: RunConfig) -> RunResult:
    """Certify every (purifier, σ, image) of the config (of its shard, with ``shard``), write the run
    directory, and return its summary. One process writes; the executor may certify anywhere.

    A purifier that breaks its contract mid-run is stopped (its reason in ``failures``); the others go on.
    """
    if config.executor == "ray":
        check_reachable(config.address)  # before the models load: a typo in --address is answered at once
    p = prepare(config)
    # A Ray cluster is reached before anything is written: an unreachable one refuses the run, not a row.
    with ray_cluster(config.address) if config.executor == "ray" else contextlib.nullcontext():
        open_run_dir(p.run_dir, p.run_config)  # every check has passed: now the directory may be created
        with RunLock(p.run_dir):
            return _execute(p)


def _execute(p: Prepared) -> RunResult:
    config = p.config
    experiment = p.run_config["experiment"]
    # Re-check under the lock: rows may have been added since prepare() read them.
    check_run_dir(p.run_dir, p.run_config)
    writers = {(f["purifier"], f["sigma"]): RowWriter(p.run_dir / f["file"], f, experiment)
               for f in p.run_config["files"]}
    failures: dict[str, str] = {}
    shard = Shard.parse(config.shard) if config.shard else None
    todo = [u for u in shard_units(units([s.label for s in config.purifiers], config.sigmas, p.indices), shard)
            if u[2] not in writers[(u[0], u[1])].done]
    # A sequential task packs as many images as fill a batch at their first look; later looks pack the
    # images still undecided.
    tasks = make_tasks(todo, images_per_task(config.n0, config.first_look, config.batch_size))
    try:
        # disable=None: no progress bar when stderr is not a terminal (logs, tests, pipes).
        with tqdm(total=len(todo), desc="certify", unit="img", dynamic_ncols=True, disable=None) as bar:

            def on_rows(task: Task, rows: list[dict[str, Any]]) -> None:
                writer = writers[(task.label, task.sigma)]
                for row in rows:
                    if row["idx"] not in writer.done:  # a retried task never writes a row twice
                        writer.write(row)
                bar.set_postfix_str(f"{task.label} σ={task.sigma:g}")
                bar.update(len(rows))

            def on_fault(task: Task, reason: str) -> None:
                failures.setdefault(task.label, reason)

            if config.executor == "ray":
                run_ray(p, certify_task, tasks, on_rows, on_fault, failures.__contains__, build=build_context,
                        address=config.address, threads=config.threads or 1)
            else:
                run_local(p, certify_task, tasks, on_rows, on_fault, failures.__contains__)
    finally:
        for writer in writers.values():
            writer.close()
    summary = write_summary(p.run_dir)
    return RunResult(p.run_dir, p.resumed, format_summary(summary), failures)
