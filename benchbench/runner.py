"""The runner: the one place that knows purifiers, the classifier and certification together.

For each purifier configuration, each σ and each selected test image it certifies the smoothed
classifier g(x) = argmax_c P(classifier(purifier(x + δ, σ)) = c) and appends one row to that pair's TSV.
The noise for image i at σ comes from a generator seeded by (run seed, i, σ) alone: every purifier sees
the same noisy copies (a paired comparison), and no result depends on the batch size or the device.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchbench.certify import ABSTAIN, certify, check_protocol
from benchbench.data import dataset_info, default_data_dir, get_dataset
from benchbench.errors import BenchError, InvalidArgument
from benchbench.models.store import fingerprint, load_classifier
from benchbench.nfe import ForwardCounter
from benchbench.presets import preset_values
from benchbench.registry import PurifierSpec, get_purifier, parse_purifier_list
from benchbench.results import RowWriter, format_summary, open_run_dir, tsv_name, write_summary


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
        check_protocol(sigma=1.0, n0=self.n0, n=self.n, alpha=self.alpha)
        for name in ("num_images", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.skip is not None and self.skip < 1:
            raise InvalidArgument(f"skip must be >= 1, got {self.skip}")

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


def noise_generator(seed: int, idx: int, sigma: float, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by (run seed, image index, σ, stream) alone. Stream 0 is the certification
    noise; stream 1 seeds a purifier's own randomness."""
    entropy = [seed, idx, int(round(sigma * 1_000_000)), stream]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def seed_purifier(purifier: Any, *, seed: int, idx: int, sigma: float) -> None:
    """Seed a stochastic purifier (one with ``manual_seed``) for image ``idx`` at σ from stream 1, so its
    own noise depends on (run seed, image, σ) alone; quality and the image grid reuse it."""
    if hasattr(purifier, "manual_seed"):
        gen = noise_generator(seed, idx, sigma, 1)
        purifier.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))


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


def _versions() -> dict[str, str]:
    from benchbench.train.common import versions

    return versions()


def run(config: RunConfig) -> RunResult:
    """Certify every (purifier, σ, image), write the run directory, and return its summary."""
    info = dataset_info(config.dataset)
    test = get_dataset(config.dataset, "test", data_dir=config.data_dir, download=config.download)
    indices = config.image_indices(len(test))
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but torch sees no CUDA device")
    classifier_ref = config.classifier or info.default_classifier
    if classifier_ref is None:
        raise BenchError(f"dataset {config.dataset!r} has no default classifier; pass --classifier")
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
        "classifier": {"ref": classifier_ref,
                       "fingerprint": getattr(classifier, "fingerprint", None)
                       or fingerprint(classifier_ref, "classifier")},
        # what the data is (e.g. the official release or not); where it lies is environment, not experiment
        "data": {k: v for k, v in test.meta.items() if k != "source"},
    }
    environment = {
        "preset": config.preset,
        "batch_size": config.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data_dir": str(Path(config.data_dir or default_data_dir()).resolve()),
        "data_source": test.meta.get("source"),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run_dir = Path(config.out or f"results/{config.preset}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    resumed = open_run_dir(run_dir, {"experiment": experiment, "environment": environment, "files": files})

    writers = {(f["purifier"], f["sigma"]): RowWriter(run_dir / f["file"]) for f in files}
    try:
        todo = sum(len(set(indices) - w.done) for w in writers.values())
        with tqdm(total=todo, desc="certify", unit="img", dynamic_ncols=True) as bar:
            for spec in config.purifiers:
                purifier = purifiers[spec.label]
                for sigma in config.sigmas:
                    writer = writers[(spec.label, sigma)]
                    bar.set_postfix_str(f"{spec.label} σ={sigma:g}")
                    for idx in indices:
                        if idx in writer.done:
                            continue
                        writer.write(_certify_one(config, purifier, classifier, test, idx, sigma, test.num_classes))
                        bar.update(1)
    finally:
        for writer in writers.values():
            writer.close()
    summary = write_summary(run_dir)
    return RunResult(run_dir, resumed, format_summary(summary))


def _certify_one(config: RunConfig, purifier: Any, classifier: torch.nn.Module, test: Any, idx: int,
                 sigma: float, num_classes: int) -> dict[str, Any]:
    device = next(classifier.parameters()).device
    x = test.images[idx].to(device)
    label = int(test.labels[idx])
    seed_purifier(purifier, seed=config.seed, idx=idx, sigma=sigma)

    @torch.no_grad()
    def classify(batch: torch.Tensor) -> torch.Tensor:
        purified = purifier(batch, sigma)
        if purified.shape != batch.shape:
            raise BenchError(f"purifier returned shape {tuple(purified.shape)} for input {tuple(batch.shape)}")
        return classifier(purified).argmax(1)

    start = time.perf_counter()
    with ForwardCounter(purifier.networks) as counter:
        cert = certify(classify, x, sigma=sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                       batch_size=config.batch_size, num_classes=num_classes,
                       generator=noise_generator(config.seed, idx, sigma))
    seconds = time.perf_counter() - start
    return {
        "idx": idx,
        "label": label,
        "predict": cert.prediction,
        "radius": cert.radius,
        "correct": int(cert.prediction == label and cert.prediction != ABSTAIN),
        "time": seconds,
        "pa_lower": cert.pa_lower,
        "nfe": counter.rows / (config.n0 + config.n),
        "n": config.n,
    }

