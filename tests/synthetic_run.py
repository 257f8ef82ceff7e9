"""Tiny synthetic run directories for the reporting tests: config.json plus one TSV per (purifier, σ),
written by hand (not by benchbench.results.rundir) so the tests read numbers independently of the code they test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import norm

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pa_lower", "nfe", "n"]


def random_rows(rng: np.random.RandomState, sigma: float, indices: list[int], sec: float, nfe: float,
                skill: float) -> list[dict]:
    """Rows with every case that matters: certified correct, abstain, and a wrong class with radius > 0."""
    rows = []
    for idx in indices:
        label = int(rng.randint(10))
        u = rng.rand()
        # pa_lower up to 0.93, below 0.001^(1/100): what n = 100 samples at α = 0.001 can certify at most
        if u < skill:  # correct, with a radius that may be 0
            predict, pa = label, float(rng.choice([0.5, rng.uniform(0.5, 0.93)]))
        elif u < skill + (1 - skill) / 2:  # abstain
            predict, pa = -1, 0.3
        else:  # certified, but the wrong class: must not count
            predict, pa = (label + 1) % 10, float(rng.uniform(0.5, 0.93))
        pa = round(pa, 6)
        radius = round(sigma * norm.ppf(pa), 6) if predict >= 0 else 0.0  # Cohen et al.'s radius
        rows.append({"idx": idx, "label": label, "predict": predict, "radius": radius,
                     "correct": int(predict == label), "time": round(sec * rng.uniform(0.9, 1.1), 5),
                     "pa_lower": pa, "nfe": nfe, "n": 100})
    return rows


def write_run(run_dir: Path, purifiers: list[dict], cells: dict[tuple[str, float], list[dict]],
              device: str = "cpu", dataset: str = "digits", seed: int = 0) -> Path:
    """``purifiers``: the config's experiment.purifiers entries (label, name, params); ``cells``: rows per
    (label, σ). Files are listed in config.json in the order of ``cells``."""
    run_dir.mkdir(parents=True)
    files = []
    for (label, sigma), rows in cells.items():
        name = f"certify_{len(files)}_sigma{sigma:g}.tsv"
        with open(run_dir / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS, delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)
        files.append({"purifier": label, "sigma": sigma, "file": name})
    indices = sorted({r["idx"] for rows in cells.values() for r in rows})
    sigmas = sorted({s for _, s in cells})
    config = {
        "experiment": {"dataset": dataset, "split": "test", "image_indices": indices, "purifiers": purifiers,
                       "sigmas": sigmas, "n0": 10, "n": 100, "alpha": 0.001, "seed": seed,
                       "classifier": {"ref": dataset, "fingerprint": "sha256:0"}},
        "environment": {"device": "cuda" if device != "cpu" else "cpu", "device_name": device},
        "files": files,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def standard_run(run_dir: Path, seed: int = 0, device: str = "cpu") -> Path:
    """Three configurations × three σs × 30 images: fast/weak, one-step/strong, slow/strongest."""
    rng = np.random.RandomState(seed)
    specs = [("identity", 0.01, 0.0, 0.45), ("ddpm", 0.2, 1.0, 0.8), ("slow(steps=10)", 2.0, 10.0, 0.85)]
    indices = list(range(0, 450, 15))
    cells = {(label, s): random_rows(rng, s, indices, sec, nfe, skill)
             for label, sec, nfe, skill in specs for s in (0.25, 0.5, 1.0)}
    purifiers = [{"label": label, "name": label.split("(")[0], "params": {}} for label, *_ in specs]
    return write_run(run_dir, purifiers, cells, device=device)


def read_tsvs(run_dir: Path) -> dict[tuple[str, float], list[dict]]:
    """Every TSV of a run as plain dicts of floats, keyed by (purifier, σ), with the csv module."""
    config = json.loads((run_dir / "config.json").read_text())
    out = {}
    for entry in config["files"]:
        with open(run_dir / entry["file"], newline="") as fh:
            out[(entry["purifier"], entry["sigma"])] = [{k: float(v) for k, v in r.items()}
                                                         for r in csv.DictReader(fh, delimiter="\t")]
    return out
