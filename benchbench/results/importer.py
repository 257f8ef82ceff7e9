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
``imported`` record, with the α given); otherwise a new run directory holds them alone. Nothing is written
until every row has passed the checks every later read makes, the rows name only images the run has, and
no other bench process holds the run's lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import norm

from benchbench.errors import InvalidArgument, RunConflict, first_line
from benchbench.results.lock import RunLock, check_unlocked
from benchbench.results.rundir import CONFIG, RowWriter, check_rows, open_run_dir, radius_limit, read_config, \
    tsv_name, write_atomic, write_summary

FORMATS = ("cohen", "dds")
HEADER = ["idx", "label", "predict", "radius", "correct", "time"]


def _seconds(path: Path, rows: pd.DataFrame) -> pd.Series:
    """``time`` as seconds: numbers stay, ``H:MM:SS.ffffff`` strings are parsed by pandas; a value that is
    neither is an InvalidArgument naming its row."""
    out = []
    for i, text in enumerate(rows["time"]):
        try:
            out.append(float(text))
        except ValueError:
            try:
                out.append(pd.Timedelta(text).total_seconds())
            except ValueError:
                raise InvalidArgument(f"{path}: row {i + 2} (idx {rows['idx'].iloc[i]}): time {text!r} is neither "
                                      "seconds nor H:MM:SS.ffffff") from None
    return pd.Series(out, index=rows.index, dtype=float)


def _first_bad(path: Path, rows: pd.DataFrame, bad: pd.Series, what: str) -> None:
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise InvalidArgument(f"{path}: row {i + 2} (idx {rows['idx'].iloc[i]}): {what}")


def read_published(path: str | Path, fmt: str, sigma: float, n: int | None = None,
                   alpha: float | None = None) -> pd.DataFrame:
    """The rows of a Cohen- or DDS-format certify file in benchbench's columns (see the module docstring).
    Raises InvalidArgument, naming the file and the row, for anything that is not that format or not a
    certificate: an index or class that is not a whole number ≥ 0 (predict ≥ −1), a radius that is not
    finite, negative, given to an abstention or larger than ``n`` samples at ``alpha`` can certify
    (:func:`benchbench.results.rundir.radius_limit`), a time that is negative or not finite."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r} (available: {', '.join(FORMATS)})")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InvalidArgument(f"sigma must be a positive number, got {sigma}")
    if n is not None and n < 1:
        raise InvalidArgument(f"--n must be a sample count >= 1, got {n}")
    if alpha is not None and not 0 < alpha < 1:
        raise InvalidArgument(f"--alpha must lie strictly between 0 and 1, got {alpha}")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path} is not a file")
    try:
        rows = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} is not a tab-separated certify file: {first_line(exc)}") from None
    if list(rows.columns) != HEADER:
        raise InvalidArgument(f"{path}: header {list(rows.columns)} is not the certify header {' '.join(HEADER)}")
    if rows.empty:
        raise InvalidArgument(f"{path} holds no rows")
    numbers = {c: pd.to_numeric(rows[c], errors="coerce") for c in ("idx", "label", "predict", "correct", "radius")}
    for col, values in numbers.items():
        _first_bad(path, rows, values.isna(), f"{col} is not a number")
    for col, low in (("idx", 0), ("label", 0), ("predict", -1), ("correct", 0)):
        values = numbers[col]
        _first_bad(path, rows, ~(values.map(math.isfinite) & (values == values.round()) & (values >= low)),
                   f"{col} is not a whole number >= {low}")
    ints = {c: numbers[c].astype("int64") for c in ("idx", "label", "predict")}
    correct = numbers["correct"].astype("int64")
    radius = numbers["radius"].astype(float)
    seconds = _seconds(path, rows)
    _first_bad(path, rows, ~(seconds.map(math.isfinite) & (seconds >= 0)), "time is negative or not finite")
    if fmt == "dds":  # a running total: row i's own value is the increase over row i−1
        correct = correct.diff().fillna(correct.iloc[0]).astype("int64")
    expected = ((ints["predict"] == ints["label"]) & (ints["predict"] >= 0)).astype("int64")
    bad = (~correct.isin([0, 1])) | (correct != expected)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        hint = " (is it a DDS file? its correct column is a running total)" if fmt == "cohen" else ""
        raise InvalidArgument(f"{path}: row {i + 2} (idx {ints['idx'].iloc[i]}): correct={correct.iloc[i]} does "
                              f"not match predict == label{hint}")
    if ints["idx"].duplicated().any():
        raise InvalidArgument(f"{path}: image index {int(ints['idx'][ints['idx'].duplicated()].iloc[0])} appears twice")
    certified = ints["predict"] >= 0
    _first_bad(path, rows, ~(radius.map(math.isfinite) & (radius >= 0)), "radius is negative or not finite")
    _first_bad(path, rows, ~certified & (radius != 0), "an abstention (predict -1) with a radius other than 0")
    limit = radius_limit(sigma, float("nan") if n is None else n, alpha if n is not None else None)
    _first_bad(path, rows, radius > limit, f"radius above {limit:.4g}, the largest " + (
        f"n = {n} samples at α = {alpha:g} can certify at σ = {sigma:g}" if n is not None and alpha is not None
        else f"any finite sample can certify at σ = {sigma:g}"))
    pa_lower = pd.Series(norm.cdf(radius / sigma), index=rows.index).where(certified, float("nan"))
    return pd.DataFrame({"idx": ints["idx"], "label": ints["label"], "predict": ints["predict"], "radius": radius,
                         "correct": correct, "time": seconds, "pa_lower": pa_lower, "nfe": float("nan"),
                         "n": n if n is not None else float("nan")})


def _plan(rows: pd.DataFrame, entry: dict[str, Any], out: Path, dataset: str | None, n: int | None,
          alpha: float | None, source: Path) -> tuple[dict[str, Any], str | None]:
    """The config to write and a warning (or None), after every check, writing nothing."""
    label, sigma = entry["purifier"], entry["sigma"]
    warning = None
    if (out / CONFIG).is_file():
        try:
            config = read_config(out)
        except InvalidArgument as exc:
            raise RunConflict(str(exc)) from None
        if any(f["purifier"] == label and float(f["sigma"]) == sigma for f in config["files"]):
            raise RunConflict(f"{out} already holds {label!r} at sigma={sigma:g}; pass another --label")
        run_images = config["experiment"].get("image_indices")
        if run_images is not None:
            foreign = sorted(set(int(i) for i in rows["idx"]) - set(run_images))
            if foreign:
                shown = ", ".join(map(str, foreign[:5])) + (", …" if len(foreign) > 5 else "")
                raise InvalidArgument(f"{source} has rows for {len(foreign)} image{'s' * (len(foreign) > 1)} the run "
                                      f"in {out} never had (idx {shown}); import it into a new --out")
            if len(rows) < len(run_images):
                warning = (f"{source} covers {len(rows)} of the run's {len(run_images)} images: its report row is "
                           f"over those {len(rows)} only (the images column says so)")
        config = {**config, "files": [*config["files"], entry]}
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunConflict(f"{out} exists and is not a benchbench run directory; choose another --out")
        experiment = {"dataset": dataset, "split": "test", "image_indices": sorted(int(i) for i in rows["idx"]),
                      "purifiers": [], "sigmas": [sigma], "n0": None, "n": n, "alpha": alpha, "seed": None,
                      "classifier": None, "imported": True}
        config = {"experiment": experiment, "environment": {}, "files": [entry]}
    if (out / entry["file"]).exists():
        raise RunConflict(f"{out / entry['file']} already exists; pass another --label")
    try:
        check_rows(rows, entry, config["experiment"])
    except ValueError as exc:
        raise InvalidArgument(f"{source}: {exc}") from None
    return config, warning


def import_published(path: str | Path, fmt: str, *, sigma: float, out: str | Path, label: str | None = None,
                     dataset: str | None = None, n: int | None = None, alpha: float | None = None) -> Path:
    """Write the rows of ``path`` into run directory ``out`` as purifier ``label`` (default: ``fmt``) at σ;
    returns the TSV written.

    Everything is checked before anything is written, and the checks are those every later read makes:
    a refusal leaves ``out`` as it was. Refused: a bad row (:func:`read_published`), a label with a tab or
    line break, an existing file or (label, σ), rows for images an existing run never had, and a run that
    another bench process holds (its lock). Rows covering only some of an existing run's images are
    imported with a UserWarning saying so.
    """
    label = fmt if label is None else label
    if not label.strip() or any(ch in label for ch in "\t\n\r"):
        raise InvalidArgument(f"--label {label!r} must be a non-empty label without tabs or line breaks")
    rows = read_published(path, fmt, sigma, n, alpha)
    source, out = Path(path), Path(out)
    record: dict[str, Any] = {"format": fmt, "source": str(source.resolve()),
                              "sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "alpha": alpha}
    entry = {"purifier": label, "sigma": sigma, "file": tsv_name(label, sigma), "imported": record}
    if out.is_dir():
        check_unlocked(out)
    config, warning = _plan(rows, entry, out, dataset, n, alpha, source)
    if (out / CONFIG).is_file():
        with RunLock(out):
            config, warning = _plan(rows, entry, out, dataset, n, alpha, source)  # as it is now, under the lock
            _write(out, config, entry, rows, new=False)
    else:
        open_run_dir(out, config)
        with RunLock(out):
            _write(out, config, entry, rows, new=True)
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    return out / entry["file"]


def _write(out: Path, config: dict[str, Any], entry: dict[str, Any], rows: pd.DataFrame, new: bool) -> None:
    if not new:
        write_atomic(out / CONFIG, json.dumps(config, indent=2) + "\n")
    writer = RowWriter(out / entry["file"], entry, config["experiment"])
    try:
        for row in rows.to_dict("records"):
            writer.write(row)
    finally:
        writer.close()
    write_summary(out)
