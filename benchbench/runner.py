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
from benchbench.data import dataset_info, get_dataset
from benchbench.errors import BenchError, InvalidArgument
from benchbench.models.store import fingerprint, load_classifier
from benchbench.nfe import ForwardCounter
from benchbench.presets import PRESETS
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
        values = dict(PRESETS[args.preset])
        for key in ("dataset", "n0", "n", "alpha", "num_images", "skip", "batch_size", "seed", "classifier", "out"):
            if getattr(args, key, None) is not None:
                values[key] = getattr(args, key)
        if args.sigmas is not None:
            values["sigmas"] = tuple(_parse_float(s, "sigma") for s in args.sigmas.split(",") if s.strip())
        values["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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


class _CopyNoiseStandIn:
    """STAND-IN for ``benchbench.seeding.CopyNoise`` (interface 1, issue 11) until that branch is merged:
    row j draws from a generator keyed by (run seed, image, σ, copy index of row j) alone; successive calls
    continue each row's stream. Only what densepure needs; the lead replaces it with the real one."""

    def __init__(self, seed: int, idx: int, sigma: float, copies: range):
        self.generators = [noise_generator(seed, idx, sigma, 2 + c) for c in copies]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        rows = [torch.randn((1, *x.shape[1:]), generator=g) for g in self.generators]
        return torch.cat(rows).to(device=x.device, dtype=x.dtype)


def majority_vote(labels: torch.Tensor, votes: int, num_classes: int) -> torch.Tensor:
    """Labels (B·K,) of K votes per input (rows b·K … b·K+K−1) → (B,) majority labels; a tie goes to the
    lowest class index (argmax returns the first maximum)."""
    counts = torch.nn.functional.one_hot(labels.view(-1, votes), num_classes).sum(1)
    return counts.argmax(1)


def purify_copies(purifier: Any, batch: torch.Tensor, sigma: float, *, seed: int, idx: int,
                  first_copy: int = 0) -> torch.Tensor:
    """Call a purifier on noisy copies ``first_copy`` … of image ``idx``: a stochastic one (``stochastic =
    True``) gets their per-copy noise. Returns (B·votes, C, H, W), checked."""
    if getattr(purifier, "stochastic", False):
        noise = _CopyNoiseStandIn(seed, idx, sigma, range(first_copy, first_copy + len(batch)))
        purified = purifier(batch, sigma, noise)
    else:
        purified = purifier(batch, sigma)
    votes = int(getattr(purifier, "votes", 1))
    if purified.shape != (len(batch) * votes, *batch.shape[1:]):
        raise BenchError(f"purifier returned shape {tuple(purified.shape)} for input {tuple(batch.shape)}"
                         f"{f' with votes={votes}' if votes > 1 else ''}")
    return purified


def seed_purifier(purifier: Any, *, seed: int, idx: int, sigma: float) -> None:
    """Seed a stochastic purifier (one with ``manual_seed``) for image ``idx`` at σ from stream 1, so its
    own noise depends on (run seed, image, σ) alone; quality and the image grid reuse it."""
    if hasattr(purifier, "manual_seed"):
        gen = noise_generator(seed, idx, sigma, 1)
        purifier.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))


@dataclass
class RunResult:
    run_dir: Path
    resumed: bool
    summary_markdown: str


def _distance_record(dataset: str) -> dict[str, str]:
    from benchbench.perceptual import default_perceptual, distance_record

    return distance_record(default_perceptual(dataset))


def _versions() -> dict[str, str]:
    from benchbench.train.common import versions

    return versions()


def run(config: RunConfig) -> RunResult:
    """Certify every (purifier, σ, image), write the run directory, and return its summary."""
    info = dataset_info(config.dataset)
    test = get_dataset(config.dataset, "test")
    indices = config.image_indices(len(test))
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but torch sees no CUDA device")
    classifier_ref = config.classifier or info.default_classifier
    if classifier_ref is None:
        raise BenchError(f"dataset {config.dataset!r} has no default classifier; pass --classifier")
    classifier = load_classifier(classifier_ref, device)
    purifiers = {
        spec.label: get_purifier(spec.name, **spec.params, device=str(device), dataset=config.dataset)
        for spec in config.purifiers
    }
    # A purifier with classifier_for(σ) (the Cohen et al. baseline) is certified with its own classifier
    # at each σ; resolved here, so a missing one is refused before anything is written.
    own_refs = {(label, sigma): p.classifier_for(sigma) for label, p in purifiers.items()
                if hasattr(p, "classifier_for") for sigma in config.sigmas}
    own_classifiers = {key: load_classifier(ref, device) for key, ref in own_refs.items()}
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
             "model": getattr(purifiers[s.label], "fingerprint", None),
             **({"classifiers": {f"{sg:g}": {"ref": ref, "fingerprint": fingerprint(ref, "classifier")}
                                 for (lab, sg), ref in own_refs.items() if lab == s.label}}
                if hasattr(purifiers[s.label], "classifier_for") else {})}
            for s in config.purifiers
        ],
        "sigmas": list(config.sigmas),
        "n0": config.n0,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "classifier": {"ref": classifier_ref, "fingerprint": fingerprint(classifier_ref, "classifier")},
    }
    environment = {
        "preset": config.preset,
        "batch_size": config.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        # What quality.csv's LPIPS-style distance is built on (not the certified classifier on digits).
        "perceptual_distance": _distance_record(config.dataset),
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
                        clf = own_classifiers.get((spec.label, sigma), classifier)
                        writer.write(_certify_one(config, purifier, clf, test, idx, sigma, test.num_classes))
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

    votes = int(getattr(purifier, "votes", 1))
    copies_done = 0

    @torch.no_grad()
    def classify(batch: torch.Tensor) -> torch.Tensor:
        nonlocal copies_done
        purified = purify_copies(purifier, batch, sigma, seed=config.seed, idx=idx, first_copy=copies_done)
        copies_done += len(batch)
        labels = classifier(purified).argmax(1)
        return majority_vote(labels, votes, num_classes) if votes > 1 else labels

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

