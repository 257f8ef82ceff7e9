"""The runner: the one place that knows purifiers, the classifier and certification together.

For each purifier configuration, each σ and each selected test image it certifies the smoothed
classifier g(x) = argmax_c P(classifier(purifier(x + δ, σ)) = c) and appends one row to that pair's TSV.
Every random draw is keyed by what it is for (:mod:`benchbench.seeding`): the noise of image i at σ by
(run seed, i, σ), a stochastic purifier's noise for a copy by (run seed, i, σ, copy). So every purifier
sees the same noisy copies (a paired comparison) and no count depends on the batch size.

:func:`prepare` makes every check (protocol, device, purifiers, σ against each model, each purifier's
output on a first batch, memory for a full batch, the output directory and any rows already there) and
writes nothing; only then does :func:`run` create files.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchbench.certify import ABSTAIN, certify, check_protocol, noisy_batches
from benchbench.data import ImageDataset, dataset_info, default_data_dir, get_dataset
from benchbench.environment import environment
from benchbench.errors import BenchError, InvalidArgument, PluginFault, ResourceError
from benchbench.models.store import fingerprint, load_classifier
from benchbench.nfe import ForwardCounter
from benchbench.presets import preset_values
from benchbench.registry import Purifier, PurifierSpec, get_purifier, parse_purifier_list
from benchbench.resources import ActivationMeter, check_batch_memory, check_device, check_output_location
from benchbench.results import NOISE_SCHEME, RowWriter, check_run_dir, format_summary, open_run_dir, tsv_name, \
    write_summary
from benchbench.seeding import CopyNoise, check_seed, noise_generator, sigma_key
from benchbench.validate import OutputError, check_logits, checked_purify, majority_vote


@dataclass
class RunConfig:
    """Everything a run needs. σ is in image scale ([0, 1] pixels); radii come out in the same scale."""

    purifiers: list[PurifierSpec]
    dataset: str = "digits"
    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    num_images: int = 500
    skip: int | None = None
    batch_size: int = 1000
    seed: int = 0
    device: str = "cpu"
    classifier: str | None = None
    out: str | None = None
    preset: str = "custom"
    data_dir: str | None = None    # where the dataset's files live (default: $BENCH_DATA_DIR or ./data)
    download: bool = False         # let a dataset fetch its files when they are missing

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
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.skip is not None and self.skip < 1:
            raise InvalidArgument(f"skip must be >= 1, got {self.skip}")
        try:
            check_seed(self.seed)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

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
        return cls(purifiers=parse_purifier_list(args.purifiers), preset=args.preset, **values)

    def image_indices(self, test_size: int) -> list[int]:
        """Test-set indices to certify: every ``skip``-th, at most ``num_images``; when skip is None, the
        stride that spreads num_images over the test set (the whole set when it is smaller)."""
        stride = self.skip or max(1, test_size // self.num_images)
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
        except Exception as exc:  # a network built for other inputs fails in its own way
            raise BenchError(f"classifier {ref!r} cannot take {_image_shape(test)} images of dataset "
                             f"{test.name!r}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") \
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


@dataclass
class Prepared:
    """A run with every check passed and nothing written yet."""

    config: RunConfig
    device: torch.device
    test: ImageDataset
    indices: list[int]
    classifier: torch.nn.Module
    classifier_ref: str
    purifiers: dict[str, Purifier]
    run_dir: Path
    run_config: dict[str, Any]
    resumed: bool


def prepare(config: RunConfig) -> Prepared:
    """Build and check everything a run needs, writing nothing: raises a BenchError on the first problem."""
    device = check_device(config.device)
    info = dataset_info(config.dataset)
    test = get_dataset(config.dataset, "test", data_dir=config.data_dir, download=config.download)
    indices = config.image_indices(len(test))
    run_dir = Path(config.out or f"results/{config.preset}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_location(run_dir)
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
    files = [
        {"purifier": spec.label, "sigma": sigma, "file": tsv_name(spec.label, sigma)}
        for spec in config.purifiers
        for sigma in config.sigmas
    ]
    experiment = {
        "dataset": config.dataset,
        "split": "test",
        "image_indices": indices,
        "num_classes": test.num_classes,
        "purifiers": [
            {"label": s.label, "name": s.name, "params": s.params,
             "model": getattr(purifiers[s.label], "fingerprint", None)}
            for s in config.purifiers
        ],
        "sigmas": list(config.sigmas),
        "n0": config.n0,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "noise": NOISE_SCHEME,
        "classifier": {"ref": classifier_ref,
                       "fingerprint": getattr(classifier, "fingerprint", None)
                       or fingerprint(classifier_ref, "classifier")},
        # what the data is (e.g. the official release or not); where it lies is environment, not experiment
        "data": {k: v for k, v in test.meta.items() if k != "source"},
    }
    run_config = {"experiment": experiment,
                  "environment": environment(device, preset=config.preset, batch_size=config.batch_size,
                                                 data_dir=str(Path(config.data_dir or default_data_dir()).resolve()),
                                                 data_source=test.meta.get("source")),
                  "files": files}
    resumed = check_run_dir(run_dir, run_config)
    prepared = Prepared(config, device, test, indices, classifier, classifier_ref, purifiers, run_dir, run_config,
                        resumed)
    for spec in config.purifiers:
        for sigma in config.sigmas:
            _preflight(prepared, spec.label, sigma)
    return prepared


def _preflight(p: Prepared, label: str, sigma: float) -> None:
    """Run the purifier and classifier on two noisy copies of the first image: σ against the model, the
    outputs against their contract, and the memory a full batch needs. Any failure refuses the run."""
    idx = p.indices[0]
    x = p.test.images[idx].to(p.device)
    batch = next(noisy_batches(x, 2, sigma=sigma, batch_size=2, generator=noise_generator(p.config.seed, idx, sigma)))
    purifier = p.purifiers[label]
    try:
        with ActivationMeter([*purifier.networks, p.classifier]) as meter, torch.no_grad():
            _classify(p, label, sigma, batch, idx, range(2))
    except PluginFault as exc:
        raise InvalidArgument(f"{exc} (checked before the run; nothing written)") from exc
    rows = min(p.config.batch_size, max(p.config.n0, p.config.n))
    harness = 4 * x.numel() * x.element_size() * getattr(purifier, "votes", 1)  # noise, noisy, purified copies
    check_batch_memory(meter.peak // 2 + harness, rows, p.device, f"purifier {label!r} at σ={sigma:g}")


def _classify(p: Prepared, label: str, sigma: float, batch: torch.Tensor, idx: int, copies: range) -> torch.Tensor:
    """Labels (B,) of the smoothed pipeline for noisy copies ``copies`` of image ``idx``: purify (with the
    copies' own noise when stochastic), check, classify, check, vote."""
    purifier = p.purifiers[label]
    votes = getattr(purifier, "votes", 1)
    noise = CopyNoise.for_copies(p.config.seed, sigma, idx, copies) if getattr(purifier, "stochastic", False) \
        else None
    where = f"purifier {label!r} at σ={sigma:g}, image {idx}"
    try:
        out = checked_purify(purifier, batch, sigma, noise)
    except OutputError as exc:
        raise PluginFault(f"{where}: {exc.reason}") from None
    except Exception as exc:  # a plugin's bug or refusal: one line naming it, the σ and the image
        _raise_if_oom(exc, where)
        raise PluginFault(f"{where} raised {type(exc).__name__}: {_first_line(exc)}") from exc
    try:
        logits = p.classifier(out)
    except Exception as exc:
        _raise_if_oom(exc, where)
        raise PluginFault(f"classifier {p.classifier_ref!r} on {where} raised {type(exc).__name__}: "
                          f"{_first_line(exc)}") from exc
    try:
        logits = check_logits(logits, len(out), p.test.num_classes)
    except OutputError as exc:
        raise PluginFault(f"classifier {p.classifier_ref!r} on {where}: {exc.reason}") from None
    return majority_vote(logits.argmax(1), votes, p.test.num_classes)


def _raise_if_oom(exc: BaseException, where: str) -> None:
    """An allocator failure (CUDA or CPU) becomes one ResourceError line that says what to change."""
    text = str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
            "can't allocate memory" in text:
        raise ResourceError(f"{where}: out of memory ({_first_line(exc)[:120]}); use a smaller --batch-size") \
            from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "(no message)"


def run(config: RunConfig) -> RunResult:
    """Certify every (purifier, σ, image), write the run directory, and return its summary.

    A purifier that breaks its contract mid-run is stopped (its reason in ``failures``); the others go on.
    """
    p = prepare(config)
    open_run_dir(p.run_dir, p.run_config)
    experiment = p.run_config["experiment"]
    writers = {(f["purifier"], f["sigma"]): RowWriter(p.run_dir / f["file"], f, experiment)
               for f in p.run_config["files"]}
    failures: dict[str, str] = {}
    try:
        todo = sum(len(set(p.indices) - w.done) for w in writers.values())
        # disable=None: no progress bar when stderr is not a terminal (logs, tests, pipes).
        with tqdm(total=todo, desc="certify", unit="img", dynamic_ncols=True, disable=None) as bar:
            for spec in config.purifiers:
                for sigma in config.sigmas:
                    writer = writers[(spec.label, sigma)]
                    bar.set_postfix_str(f"{spec.label} σ={sigma:g}")
                    for idx in p.indices:
                        if spec.label in failures:
                            break
                        if idx in writer.done:
                            continue
                        try:
                            writer.write(_certify_one(p, spec.label, idx, sigma))
                        except PluginFault as exc:
                            failures[spec.label] = str(exc)
                        bar.update(1)
    finally:
        for writer in writers.values():
            writer.close()
    summary = write_summary(p.run_dir)
    return RunResult(p.run_dir, p.resumed, format_summary(summary), failures)


def _certify_one(p: Prepared, label: str, idx: int, sigma: float) -> dict[str, Any]:
    config = p.config
    x = p.test.images[idx].to(p.device)
    true_label = int(p.test.labels[idx])
    drawn = 0  # certification draws its copies in order: selection 0 … n0−1, then estimation n0 … n0+n−1

    @torch.no_grad()
    def classify(batch: torch.Tensor) -> torch.Tensor:
        nonlocal drawn
        labels = _classify(p, label, sigma, batch, idx, range(drawn, drawn + len(batch)))
        drawn += len(batch)
        return labels

    start = time.perf_counter()
    with ForwardCounter(p.purifiers[label].networks) as counter:
        cert = certify(classify, x, sigma=sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                       batch_size=config.batch_size, num_classes=p.test.num_classes,
                       generator=noise_generator(config.seed, idx, sigma))
    seconds = time.perf_counter() - start
    return {
        "idx": idx,
        "label": true_label,
        "predict": cert.prediction,
        "radius": cert.radius,
        "correct": int(cert.prediction == true_label and cert.prediction != ABSTAIN),
        "time": seconds,
        "pa_lower": cert.pa_lower,
        "nfe": counter.rows / (config.n0 + config.n),
        "n": config.n,
    }

