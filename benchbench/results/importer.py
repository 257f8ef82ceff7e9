"""Published certification results beside benchbench's: read the certify output of Cohen et al.'s
``locuslab/smoothing`` or of Carlini et al.'s DDS code into a run directory.

Both write one tab-separated row per image with the header ``idx label predict radius correct time``:
``predict`` −1 for an abstention, ``radius`` with 3 significant digits, ``time`` as Python's
``str(datetime.timedelta)`` (``0:00:01.234567``). Cohen's ``correct`` is 0/1 per row; DDS's
(``cifar10/certify.py``, ``imagenet/certify.py``) is the running total of correct rows, which is undone here
(row i's value minus row i−1's). Every row is checked: ``correct`` must come out 0/1 and equal
``predict == label``.

Rows land in benchbench's TSV format. ``pa_lower`` is recovered as Φ(radius/σ) for certified rows (from the
3-digit radius) and left empty for abstentions; ``nfe`` is unknown (empty); ``n`` is what the caller says.
Into an existing run directory the rows are added as one more purifier (its entry in ``files`` carries an
``imported`` record); otherwise a new run directory holds them alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import norm

from benchbench.errors import InvalidArgument, RunConflict, first_line
from benchbench.results.rundir import CONFIG, RowWriter, open_run_dir, tsv_name, write_atomic, write_summary

FORMATS = ("cohen", "dds")
HEADER = ["idx", "label", "predict", "radius", "correct", "time"]


def _seconds(values: pd.Series) -> pd.Series:
    """``time`` as seconds: numbers stay, ``H:MM:SS.ffffff`` strings are parsed by pandas."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(float)
    return pd.to_timedelta(values.astype(str)).dt.total_seconds()


def read_published(path: str | Path, fmt: str, sigma: float, n: int | None = None) -> pd.DataFrame:
    """The rows of a Cohen- or DDS-format certify file in benchbench's columns (see the module docstring).
    Raises InvalidArgument, naming the file and the row, for anything that is not that format."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r} (available: {', '.join(FORMATS)})")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InvalidArgument(f"sigma must be a positive number, got {sigma}")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path} is not a file")
    try:
        rows = pd.read_csv(path, sep="\t", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} is not a tab-separated certify file: {first_line(exc)}") from None
    if list(rows.columns) != HEADER:
        raise InvalidArgument(f"{path}: header {list(rows.columns)} is not the certify header {' '.join(HEADER)}")
    if rows.empty:
        raise InvalidArgument(f"{path} holds no rows")
    try:
        ints = {c: pd.to_numeric(rows[c], errors="raise").astype("int64") for c in ("idx", "label", "predict", "correct")}
        radius = pd.to_numeric(rows["radius"], errors="raise").astype(float)
        seconds = _seconds(rows["time"])
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{path}: a value is not a number ({exc})") from None
    correct = ints["correct"]
    if fmt == "dds":  # a running total: row i's own value is the increase over row i−1
        correct = correct.diff().fillna(correct.iloc[0]).astype("int64")
    expected = ((ints["predict"] == ints["label"]) & (ints["predict"] >= 0)).astype("int64")
    bad = (~correct.isin([0, 1])) | (correct != expected)
    if bad.any():
        i = int(bad.idxmax())
        hint = " (is it a DDS file? its correct column is a running total)" if fmt == "cohen" else ""
        raise InvalidArgument(f"{path}: row {i + 2} (idx {ints['idx'].iloc[i]}): correct={correct.iloc[i]} does "
                              f"not match predict == label{hint}")
    if ints["idx"].duplicated().any():
        raise InvalidArgument(f"{path}: image index {int(ints['idx'][ints['idx'].duplicated()].iloc[0])} appears twice")
    certified = ints["predict"] >= 0
    pa_lower = pd.Series(norm.cdf(radius / sigma), index=rows.index).where(certified, float("nan"))
    return pd.DataFrame({"idx": ints["idx"], "label": ints["label"], "predict": ints["predict"], "radius": radius,
                         "correct": correct, "time": seconds, "pa_lower": pa_lower, "nfe": float("nan"),
                         "n": n if n is not None else float("nan")})


def import_published(path: str | Path, fmt: str, *, sigma: float, out: str | Path, label: str | None = None,
                     dataset: str | None = None, n: int | None = None, alpha: float | None = None) -> Path:
    """Write the rows of ``path`` into run directory ``out`` as purifier ``label`` (default: ``fmt``) at σ;
    returns the TSV written. Everything is checked before anything is written; an existing file or a
    (label, σ) already in the run is refused."""
    rows = read_published(path, fmt, sigma, n)
    label = label or fmt
    out = Path(out)
    name = tsv_name(label, sigma)
    record: dict[str, Any] = {"format": fmt, "source": str(Path(path).resolve()),
                              "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    entry = {"purifier": label, "sigma": sigma, "file": name, "imported": record}
    config_path = out / CONFIG
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunConflict(f"{config_path} is not valid JSON ({exc.msg})") from None
        if any(f["purifier"] == label and float(f["sigma"]) == sigma for f in config.get("files", [])):
            raise RunConflict(f"{out} already holds {label!r} at sigma={sigma:g}; pass another --label")
        config["files"].append(entry)
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunConflict(f"{out} exists and is not a benchbench run directory; choose another --out")
        experiment = {"dataset": dataset, "split": "test", "image_indices": sorted(int(i) for i in rows["idx"]),
                      "purifiers": [], "sigmas": [sigma], "n0": None, "n": n, "alpha": alpha, "seed": None,
                      "classifier": None, "imported": True}
        config = {"experiment": experiment, "environment": {}, "files": [entry]}
    if (out / name).exists():
        raise RunConflict(f"{out / name} already exists; pass another --label")
    if config_path.is_file():
        write_atomic(config_path, json.dumps(config, indent=2) + "\n")
    else:
        open_run_dir(out, config)
    writer = RowWriter(out / name, entry, config["experiment"])
    try:
        for row in rows.to_dict("records"):
            writer.write(row)
    finally:
        writer.close()
    write_summary(out)
    return out / name
