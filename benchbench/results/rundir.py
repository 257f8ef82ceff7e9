"""The run directory: ``config.json``, one TSV of rows per (purifier, σ), and the summary.

The TSV keeps Cohen et al.'s columns ``idx label predict radius correct time`` (``correct`` is 0/1 for
that row, ``time`` is seconds for that image) plus ``pa_lower nfe n purifier sigma``: nfe is network calls
per noisy sample, n the estimation sample count, and the last two say which purifier label and σ the row
belongs to (the file name holds a hash of both, so no two pairs share a file). Rows are appended and
flushed one at a time, so a crash loses at most the row in flight, and a rerun with the same config resumes
after the last complete row. Every row is parsed and range-checked whenever a TSV is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from scipy.special import ndtri
from scipy.stats import norm

from benchbench.errors import InvalidArgument, RunConflict

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pa_lower", "nfe", "n", "purifier", "sigma")
# Files written before the purifier and σ columns existed are still read (report, plots, compare).
LEGACY_COLUMNS = COLUMNS[:9]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CONFIG = "config.json"
# Part of the experiment: rows computed under another noise scheme must not be mixed with these.
NOISE_SCHEME = ("v3: 64-bit-field keys through SeedSequence, PCG64 + numpy's float32 ziggurat on the CPU, Philox on CUDA; "
                "certification noise keyed by (seed, image, σ); purifier noise by (seed, image, σ, block of 64 "
                "copies, vote, draw) on the noise device")


def certification(experiment: dict[str, Any]) -> dict[str, Any] | None:
    """The sequential rule a run's rows were certified with (``mode``, ``radii``, ``looks``), or None for
    Cohen et al.'s fixed protocol (whose config records no mode, as before sequential runs existed)."""
    record = experiment.get("certification")
    return record if isinstance(record, dict) and record.get("mode") == "sequential" else None


def run_radii(experiment: dict[str, Any]) -> tuple[float, ...]:
    """The radii a run's tables report: a sequential run's grid (what it decided), else :data:`RADII`."""
    record = certification(experiment)
    return tuple(float(r) for r in record["radii"]) if record else RADII


def certification_note(experiment: dict[str, Any]) -> str | None:
    """One sentence for tables and figures of a sequential run (None for fixed): the rule, and that its
    ACR is capped by the grid."""
    record = certification(experiment)
    if record is None:
        return None
    grid = ", ".join(f"{float(r):g}" for r in record["radii"])
    return (f"Sequential certification: estimation samples in {len(record['looks'])} looks up to "
            f"n = {record['looks'][-1]:,}, stopping once every grid radius ({grid}) is certified or ruled out; "
            f"Clopper–Pearson bounds at α/{len(record['looks'])} per look (union bound: each certificate is "
            "still wrong with probability ≤ α). Accuracy is decided at the grid radii only; radii stop growing "
            "once the largest grid radius is certified, so ACR is capped by the grid and is lower than the "
            "fixed protocol's")


def tsv_name(label: str, sigma: float) -> str:
    """File name of the rows for one purifier configuration at one σ: a readable part, and a hash of the
    exact label and σ so that two different pairs never share a file."""
    slug = re.sub(r"[^A-Za-z0-9.=,-]+", "_", label).strip("_")[:48]
    digest = hashlib.sha256(f"{label}\t{float(sigma)!r}".encode()).hexdigest()[:10]
    return f"certify_{slug}_sigma{sigma:g}_{digest}.tsv"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the
    new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _short(value: Any, width: int = 60, other: Any = None) -> str:
    """``value`` as JSON, at most ``width`` characters; cut around where it first differs from ``other``,
    so that two long values that differ near their end do not print the same prefix."""
    text = json.dumps(value)
    if len(text) <= width:
        return text
    start = 0
    if other is not None:
        theirs = json.dumps(other)
        start = next((i for i, (a, b) in enumerate(zip(text, theirs)) if a != b), min(len(text), len(theirs)))
        start = max(0, min(start - width // 3, len(text) - (width - 2)))
    head = "…" if start else ""
    body = text[start: start + width - 1 - len(head)]
    return head + body + ("…" if start + len(body) < len(text) else "")


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for k, (a, b) in enumerate(zip(old, new)) for d in _diff(a, b, f"{path}[{k}]")]
    return [] if old == new else [f"{path}: {_short(old, other=new)} -> {_short(new, other=old)}"]


def _plain_name(name: Any) -> bool:
    """A file name a run directory may list: a plain ``*.tsv`` name inside it (no directory part, not
    absolute, not hidden), so that reading or merging a run never touches a file outside it."""
    return (isinstance(name, str) and name.endswith(".tsv") and not name.startswith(".")
            and "/" not in name and "\\" not in name and "\0" not in name and Path(name).name == name)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """The fields of ``config.json`` that rows are checked against, and every listed file name; an
    InvalidArgument naming ``config.json`` for the first that is wrong (not a row blamed for it)."""
    exp = config["experiment"]
    problems = []
    for key in ("n0", "n"):
        if exp.get(key) is not None and not _count(exp[key]):
            problems.append(f"experiment {key} {exp[key]!r} is not a sample count")
    if exp.get("alpha") is not None and not (_number(exp["alpha"]) and 0 < exp["alpha"] < 1):
        problems.append(f"experiment alpha {exp['alpha']!r} is not a probability")
    if exp.get("num_classes") is not None and not _count(exp["num_classes"]):
        problems.append(f"experiment num_classes {exp['num_classes']!r} is not a class count")
    indices = exp.get("image_indices")
    if indices is not None and not (isinstance(indices, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)):
        problems.append("experiment image_indices is not a list of image indices")
    names = [f["file"] for f in config["files"]]
    for f in config["files"]:
        if not _plain_name(f["file"]):
            problems.append(f"file {f['file']!r} is not a plain .tsv name inside the run directory")
        elif names.count(f["file"]) > 1:
            problems.append(f"file {f['file']!r} is listed twice")
        if not (_number(f["sigma"]) and f["sigma"] > 0):
            problems.append(f"sigma {f['sigma']!r} of {f['file']!r} is not a noise level")
        if not isinstance(f["purifier"], str) or any(ch in f["purifier"] for ch in "\t\n\r"):
            problems.append(f"purifier {f['purifier']!r} is not a label")
    if problems:
        raise InvalidArgument(f"{path}: {problems[0]}; it was not written by this benchbench or was edited")


def read_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of a run directory, checked to be a benchbench run config (an object with an
    ``experiment`` object and a ``files`` list); InvalidArgument otherwise."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InvalidArgument(f"{run_dir} is not a benchbench run directory (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{path} is not valid JSON ({exc.msg}); choose another --out") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from None
    if not (isinstance(config, dict) and isinstance(config.get("experiment"), dict)
            and isinstance(config.get("files"), list)
            and all(isinstance(f, dict) and {"purifier", "sigma", "file"} <= set(f) for f in config["files"])):
        raise InvalidArgument(f"{path} is not a benchbench run config (no experiment and files entries)")
    _check_config(path, config)
    return config


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> bool:
    """Check, writing nothing, that ``run_dir`` is new, empty, or holds the same experiment with readable
    rows; returns True when it holds a run to resume. Raises RunConflict (or InvalidArgument) otherwise."""
    path = run_dir / CONFIG
    if path.is_file():
        try:
            old = read_config(run_dir)
        except InvalidArgument as exc:
            raise RunConflict(str(exc).replace("; choose another --out", "") + "; choose another --out") from None
        diffs = _diff(old.get("experiment"), config["experiment"])
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            raise RunConflict(f"{run_dir} holds a run with a different config ({shown}); choose another --out")
        for entry in config["files"]:
            read_tsv(run_dir / entry["file"], entry, config["experiment"], allow_partial_last=True)
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunConflict(f"{run_dir} exists and is not a benchbench run directory; choose another --out")
    return False


def open_run_dir(run_dir: Path, config: dict[str, Any]) -> bool:
    """:func:`check_run_dir`, then create ``run_dir`` with ``config.json`` when it is new. Returns True when
    resuming. Nothing is written when a check fails."""
    resumed = check_run_dir(run_dir, config)
    if not resumed:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")
    return resumed


@dataclass
class TsvContent:
    """The rows of one TSV (as a DataFrame of COLUMNS, plus ``purifier``/``sigma`` for legacy files) and
    the byte length of its complete part (a last line without its newline is the row a crash cut)."""

    rows: pd.DataFrame
    complete_bytes: int


_INT_COLUMNS = ("idx", "label", "predict", "correct", "n")


# Published certify files (``bench import``) do not carry these: their rows hold NaN there.
UNKNOWN_IN_IMPORTS = ("pa_lower", "nfe", "n")


def _parse_row(fields: list[str], header: tuple[str, ...], imported: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for col, text in zip(header, fields):
        if col == "purifier":
            row[col] = text
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{col} {text!r} is not a number") from None
        if imported and col in UNKNOWN_IN_IMPORTS and math.isnan(value):
            row[col] = value
            continue
        if not math.isfinite(value):
            raise ValueError(f"{col} {text!r} is not finite")
        if col in _INT_COLUMNS:
            if value != int(value):
                raise ValueError(f"{col} {text!r} is not an integer")
            value = int(value)
        row[col] = value
    return row


def _check_row(row: dict[str, Any], entry: dict[str, Any], experiment: dict[str, Any], seen: set[int]) -> None:
    imported = "imported" in entry  # published rows: their own n, some fields unknown (NaN)
    indices = experiment.get("image_indices")
    if indices is not None and row["idx"] not in indices:
        raise ValueError(f"image {row['idx']} is not one of the run's images")
    if row["idx"] in seen:
        raise ValueError(f"image {row['idx']} appears twice")
    classes = experiment.get("num_classes")
    if row["label"] < 0 or (classes is not None and row["label"] >= classes):
        raise ValueError(f"label {row['label']} is not a class")
    if row["predict"] < -1 or (classes is not None and row["predict"] >= classes):
        raise ValueError(f"predict {row['predict']} is neither a class nor -1 (abstain)")
    if row["correct"] != int(row["predict"] == row["label"] and row["predict"] >= 0):
        raise ValueError(f"correct {row['correct']} disagrees with label {row['label']} and predict {row['predict']}")
    if row["radius"] < 0 or (row["predict"] == -1 and row["radius"] != 0):
        raise ValueError(f"radius {row['radius']} is negative or given to an abstention")
    if not (0 <= row["pa_lower"] <= 1 or (imported and math.isnan(row["pa_lower"]))):
        raise ValueError(f"pa_lower {row['pa_lower']} is not a probability")
    if row["predict"] >= 0:
        record = entry.get("imported")
        alpha = record.get("alpha") if isinstance(record, dict) else None
        _check_radius(row, float(entry["sigma"]), alpha if imported else experiment.get("alpha"), imported)
    for col in ("time", "nfe"):
        if row[col] < 0:
            raise ValueError(f"{col} {row[col]} is negative")
    if imported:
        if not (math.isnan(row["n"]) or row["n"] >= 1):
            raise ValueError(f"n {row['n']} is not a sample count")
    elif certification(experiment) is not None:
        looks = certification(experiment)["looks"]
        if row["n"] not in looks:
            raise ValueError(f"n {row['n']} is not one of the sequential run's looks ({', '.join(map(str, looks))})")
    elif row["n"] < 1 or ("n" in experiment and row["n"] != experiment["n"]):
        raise ValueError(f"n {row['n']} is not the run's n ({experiment.get('n')})")
    if "purifier" in row and row["purifier"] != entry["purifier"]:
        raise ValueError(f"purifier {row['purifier']!r} belongs in another file (this one is {entry['purifier']!r})")
    if "sigma" in row and row["sigma"] != float(entry["sigma"]):
        raise ValueError(f"sigma {row['sigma']!r} belongs in another file (this one is σ={entry['sigma']!r})")


# Written to 6 significant digits: a pa_lower in [0.5, 1] is off by at most this, a radius by this fraction.
_PA_ROUNDING, _RADIUS_ROUNDING = 1e-6, 1e-5
# The largest z with Φ(z) < 1 in double precision: no finite sample supports a larger radius/σ; the cap for
# imported rows, whose n or α is unknown.
_Z_CAP = float(norm.isf(2.0**-53))


def radius_limit(sigma: float, n: float, alpha: float | None) -> float:
    """The largest radius a certificate from ``n`` noisy samples at failure probability ``alpha`` can give:
    σ·Φ⁻¹(α^(1/n)). Any valid one-sided (1 − α) lower bound on a probability from n Bernoulli samples is at
    most α^(1/n) (at p just below it, all n samples succeed with probability above α), whatever the
    stopping rule. With n or α unknown (NaN or None), σ times the largest z with Φ(z) < 1."""
    if alpha is None or not (n >= 1):  # NaN n fails the comparison
        return sigma * _Z_CAP
    return sigma * min(float(ndtri(alpha ** (1.0 / n))), _Z_CAP)


def _check_radius(row: dict[str, Any], sigma: float, alpha: float | None, imported: bool) -> None:
    """A certified row's radius is σ·Φ⁻¹(pa_lower) (Cohen et al.'s Theorem 1), with pa_lower ≥ ½, and no
    larger than its n and α allow; imported rows carry a pa_lower recovered from the radius and maybe no n."""
    radius, pa = row["radius"], row["pa_lower"]
    limit = radius_limit(sigma, row["n"], alpha)
    if radius > limit * (1 + _RADIUS_ROUNDING) + 1e-12:
        allows = f"n = {row['n']:g} and α = {alpha:g} allow" if alpha is not None and row["n"] >= 1 else "is"
        raise ValueError(f"radius {radius:g} at σ = {sigma:g} exceeds the largest certifiable ({limit:.4g}; "
                         f"{allows} at most that)")
    if imported and math.isnan(pa):
        return
    if pa < 0.5 - _PA_ROUNDING:
        raise ValueError(f"pa_lower {pa:g} is below 1/2, where CERTIFY abstains, yet predict is {row['predict']}")
    # ndtri is the Φ⁻¹ norm.ppf computes, bit for bit, without its ~30 µs wrapper: this runs on every row read
    low = sigma * float(ndtri(max(0.5, pa - _PA_ROUNDING)))
    high = sigma * float(ndtri(min(1.0, pa + _PA_ROUNDING)))
    if not low * (1 - _RADIUS_ROUNDING) - 1e-12 <= radius <= high * (1 + _RADIUS_ROUNDING) + 1e-12:
        raise ValueError(f"radius {radius:g} is not σ·Φ⁻¹(pa_lower) = {sigma * float(norm.ppf(pa)):.6g} "
                         f"(σ = {sigma:g}, pa_lower = {pa:g})")


def read_tsv(path: Path, entry: dict[str, Any], experiment: dict[str, Any], *,
             allow_partial_last: bool = True) -> TsvContent:
    """Read and check every row of one TSV of a run; a missing file has no rows.

    ``entry`` is its ``config.json`` files entry (purifier, sigma), ``experiment`` the run's experiment.
    Every field is parsed and range-checked (see ``_check_row``); a bad row raises InvalidArgument naming
    the file and line. A last line without its newline (the row in flight when a run died) is left out
    when ``allow_partial_last``, an error otherwise.
    """
    path = Path(path)
    if path.is_symlink():  # it would read (and RowWriter append to) a file outside the run directory
        raise InvalidArgument(f"{path} is a symbolic link; a run's rows must be plain files inside it")
    if not path.exists():
        return TsvContent(pd.DataFrame(columns=list(COLUMNS)), 0)
    try:
        data = path.read_bytes()
        text = data.decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from None
    complete = len(data)
    if text and not text.endswith("\n"):
        if not allow_partial_last:
            raise InvalidArgument(f"{path} line {text.count(chr(10)) + 1}: a row cut short")
        text = text[: text.rfind("\n") + 1]
        complete = len(text.encode())
    lines = [line.removesuffix("\r") for line in text.split("\n")[:-1]] if text else []  # CRLF files too
    if not lines:
        return TsvContent(pd.DataFrame(columns=list(COLUMNS)), complete)
    header = tuple(lines[0].split("\t"))
    if header not in (COLUMNS, LEGACY_COLUMNS):
        raise RunConflict(f"{path} has unexpected columns; it was not written by this benchbench")
    rows, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, expected {len(header)}")
            row = _parse_row(fields, header, imported="imported" in entry)
            _check_row(row, entry, experiment, seen)
        except ValueError as exc:
            raise InvalidArgument(f"{path} line {number}: {exc}; fix or delete that row") from None
        seen.add(row["idx"])
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(header))
    if header == LEGACY_COLUMNS:
        df = df.assign(purifier=entry["purifier"], sigma=float(entry["sigma"]))
    return TsvContent(df, complete)


def check_rows(rows: pd.DataFrame, entry: dict[str, Any], experiment: dict[str, Any]) -> None:
    """Make, writing nothing, every check :func:`read_tsv` will make on ``rows`` once written to the file
    of ``entry`` (each row formatted as :class:`RowWriter` writes it, then parsed back): a ValueError naming
    the first bad row (``row 2`` is the first, as the file's line numbers go) otherwise."""
    seen: set[int] = set()
    for number, row in enumerate(rows.to_dict("records"), start=2):
        full = {**row, "purifier": entry["purifier"], "sigma": float(entry["sigma"])}
        try:
            parsed = _parse_row([_field(col, full[col]) for col in COLUMNS], COLUMNS, imported="imported" in entry)
            _check_row(parsed, entry, experiment, seen)
        except ValueError as exc:
            raise ValueError(f"row {number} (idx {row['idx']}): {exc}") from None
        seen.add(parsed["idx"])


class RowWriter:
    """Appends rows to one TSV, flushing each; knows which image indices are already done.

    Opening it cuts a row left half-written by a crash and writes the header of a new file, so open
    writers only once every check of the run has passed.
    """

    def __init__(self, path: Path, entry: dict[str, Any], experiment: dict[str, Any]):
        self.path = path
        self.entry = entry
        content = read_tsv(path, entry, experiment, allow_partial_last=True)
        self.done: set[int] = set(content.rows["idx"].astype(int))
        if path.exists() and path.stat().st_size != content.complete_bytes:
            os.truncate(path, content.complete_bytes)  # the row in flight when a run died
        self._fh = path.open("a")
        if content.complete_bytes == 0:
            self._fh.write("\t".join(COLUMNS) + "\n")
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        row = {**row, "purifier": self.entry["purifier"], "sigma": float(self.entry["sigma"])}
        self._fh.write("\t".join(_field(col, row[col]) for col in COLUMNS) + "\n")
        self._fh.flush()
        self.done.add(int(row["idx"]))

    def close(self) -> None:
        self._fh.close()


def load_rows(run_dir: Path) -> pd.DataFrame:
    """All rows of a run (every one checked, see :func:`read_tsv`), from the files config.json lists, with
    ``purifier`` and ``sigma`` columns."""
    config = read_config(run_dir)
    frames = []
    for entry in config["files"]:
        df = read_tsv(Path(run_dir) / entry["file"], entry, config["experiment"]).rows
        if len(df):
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def summarize(rows: pd.DataFrame, radii: Iterable[float] = RADII, samples: bool = False) -> pd.DataFrame:
    """Per purifier and σ: certified accuracy at each radius (correct and radius ≥ r), average certified
    radius (mean of radius·correct), mean seconds per image and mean NFE per noisy sample; with
    ``samples``, also ``n_mean``, the mean estimation samples per image (a sequential run's cost)."""
    radii = tuple(radii)

    def per_group(g: pd.DataFrame) -> pd.Series:
        ok = g["correct"].astype(bool)
        out = {"images": len(g)}
        out.update({f"acc@{r:g}": float((ok & (g["radius"] >= r)).mean()) for r in radii})
        out["acr"] = float((g["radius"] * ok).mean())
        out["sec_per_image"] = float(g["time"].mean())
        out["nfe"] = float(g["nfe"].mean())
        if samples:
            out["n_mean"] = float(g["n"].mean())
        return pd.Series(out)

    if rows.empty:
        return pd.DataFrame()
    order = list(dict.fromkeys(rows["purifier"]))
    summary = rows.groupby(["purifier", "sigma"], sort=False).apply(per_group, include_groups=False).reset_index()
    summary["images"] = summary["images"].astype(int)
    summary["purifier"] = pd.Categorical(summary["purifier"], categories=order, ordered=True)
    return summary.sort_values(["purifier", "sigma"]).reset_index(drop=True).astype({"purifier": str})


def write_summary(run_dir: Path) -> pd.DataFrame:
    """Recompute ``summary.csv`` and ``summary.md`` from the rows on disk and return the summary."""
    experiment = read_config(run_dir)["experiment"]
    note = certification_note(experiment)
    summary = summarize(load_rows(run_dir), run_radii(experiment), samples=note is not None)
    write_atomic(run_dir / "summary.csv", summary.to_csv(index=False))
    write_atomic(run_dir / "summary.md", format_summary(summary) + ("\n\n" + note + "." if note else "") + "\n")
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (accuracies in %, seconds with 3 significant digits)."""
    if summary.empty:
        return "(no rows)"
    shown = summary.copy()
    for col in shown.columns:
        if col.startswith("acc@"):
            shown[col] = (100 * shown[col]).round(1)
    shown = shown.rename(columns={c: f"{c} (%)" for c in shown.columns if c.startswith("acc@")})
    shown["acr"] = shown["acr"].round(3)
    shown["sec_per_image"] = shown["sec_per_image"].map(lambda s: float(f"{s:.3g}") if math.isfinite(s) else s)
    shown["nfe"] = shown["nfe"].round(2)
    if "n_mean" in shown:
        shown["n_mean"] = shown["n_mean"].round(0).astype(int)
    return shown.to_markdown(index=False)


def merge_runs(out: Path, run_dirs: list[Path]) -> dict[str, Any]:
    """Combine run directories of one experiment (the shards of ``--shard K/N``) into ``out``.

    Refuses, writing nothing, when the experiments differ, a row is bad, or two directories hold different
    rows for one (purifier, σ, image) (identical rows apart from ``time`` are kept once). ``out`` must be
    new or empty. Rows are written in run order (image order within each file); the config's environment
    lists each source's environment. Returns the config written.
    """
    if not run_dirs:
        raise InvalidArgument("bench merge needs at least one run directory")
    configs = [read_config(d) for d in run_dirs]
    base = configs[0]
    for d, c in zip(run_dirs[1:], configs[1:]):
        diffs = _diff(base["experiment"], c["experiment"])
        if diffs:
            raise RunConflict(f"{d} holds a different experiment than {run_dirs[0]} ({'; '.join(diffs[:2])}); "
                              "only shards of one run can be merged")
        if [(f["purifier"], f["sigma"], f["file"]) for f in c["files"]] != \
                [(f["purifier"], f["sigma"], f["file"]) for f in base["files"]]:
            raise RunConflict(f"{d} lists other files than {run_dirs[0]}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunConflict(f"{out} exists and is not empty; choose a new directory to merge into")
    order = {idx: k for k, idx in enumerate(base["experiment"]["image_indices"])}
    merged: dict[str, list[dict[str, Any]]] = {}
    for entry in base["files"]:
        rows: dict[int, dict[str, Any]] = {}
        for d in run_dirs:
            for row in read_tsv(d / entry["file"], entry, base["experiment"]).rows.to_dict("records"):
                old = rows.get(int(row["idx"]))
                if old is not None and {k: v for k, v in old.items() if k != "time"} != \
                        {k: v for k, v in row.items() if k != "time"}:
                    raise RunConflict(f"{entry['file']}: image {row['idx']} has different rows in two directories")
                rows.setdefault(int(row["idx"]), row)
        merged[entry["file"]] = sorted(rows.values(), key=lambda r: order[int(r["idx"])])
    config = {"experiment": base["experiment"],
              "environment": {"merged_from": [{"dir": str(d), **c.get("environment", {})}
                                              for d, c in zip(run_dirs, configs)]},
              "files": base["files"]}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG, json.dumps(config, indent=2) + "\n")
    for entry in base["files"]:
        lines = ["\t".join(COLUMNS)]
        for row in merged[entry["file"]]:
            row = {**row, "purifier": entry["purifier"], "sigma": float(entry["sigma"])}
            lines.append("\t".join(_field(col, row[col]) for col in COLUMNS))
        write_atomic(out / entry["file"], "\n".join(lines) + "\n")
    return config


def missing_shards(config: dict[str, Any]) -> str | None:
    """For a merged config (:func:`merge_runs`): None when its sources are every shard K/N of one N (or
    not shards at all); otherwise a sentence naming the shards that are not there."""
    found: dict[int, set[int]] = {}
    for source in config.get("environment", {}).get("merged_from", []):
        m = re.fullmatch(r"(\d+)/(\d+)", str(source.get("shard", "")))
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    missing = [f"{k}/{n}" for n, ks in sorted(found.items()) for k in range(1, n + 1) if k not in ks]
    if not missing:
        return None
    return (f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} not among the merged directories: "
            "the merged run is partial (bench merge again with every shard to complete it)")


def _field(col: str, value: Any) -> str:
    """One TSV field as :class:`RowWriter` writes it (integers plain, floats to 6 significant digits, σ
    exactly)."""
    if col == "sigma":
        return repr(float(value))
    if col in _INT_COLUMNS:
        return "nan" if isinstance(value, float) and math.isnan(value) else str(int(value))  # n of an import
    if col == "purifier":
        return str(value)
    return f"{float(value):.6g}"
