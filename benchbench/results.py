"""The run directory: ``config.json``, one TSV of rows per (purifier, σ), and the summary.

The TSV keeps Cohen et al.'s columns ``idx label predict radius correct time`` (``correct`` is 0/1 for
that row, ``time`` is seconds for that image) plus ``pa_lower nfe n``: nfe is network calls per noisy
sample, n the estimation sample count. Rows are appended and flushed one at a time, so a crash loses at
most the row in flight, and a rerun with the same config resumes after the last complete row.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from benchbench.errors import RunConflict

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pa_lower", "nfe", "n")
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CONFIG = "config.json"


def tsv_name(label: str, sigma: float) -> str:
    """File name of the rows for one purifier configuration at one σ."""
    return f"certify_{re.sub(r'[^A-Za-z0-9.=,-]+', '_', label).strip('_')}_sigma{sigma:g}.tsv"


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path}: {json.dumps(old)} -> {json.dumps(new)}"]


def open_run_dir(run_dir: Path, config: dict[str, Any]) -> bool:
    """Create ``run_dir`` with ``config`` or check that it already holds the same experiment.

    ``config["experiment"]`` decides what the numbers are and must match exactly to resume;
    ``config["environment"]`` (versions, device, batch size) is informational. Returns True when resuming.
    Raises RunConflict, writing nothing, when the directory holds something else.
    """
    path = run_dir / CONFIG
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RunConflict(f"{path} is not valid JSON ({exc.msg}); choose another --out") from None
        diffs = _diff(old.get("experiment"), config["experiment"])
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            raise RunConflict(f"{run_dir} holds a run with a different config ({shown}); choose another --out")
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunConflict(f"{run_dir} exists and is not a benchbench run directory; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return False


class RowWriter:
    """Appends rows to one TSV, flushing each; knows which image indices are already done."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[int] = set()
        if path.exists():
            text = path.read_text()
            if text and not text.endswith("\n"):  # the row in flight when a run died: drop it
                text = text[: text.rfind("\n") + 1]
                path.write_text(text)
            lines = text.splitlines()
            if lines and lines[0].split("\t") != list(COLUMNS):
                raise RunConflict(f"{path} has unexpected columns; it was not written by this benchbench")
            self.done = {int(line.split("\t")[0]) for line in lines[1:] if line}
        self._fh = path.open("a")
        if not self.done and path.stat().st_size == 0:
            self._fh.write("\t".join(COLUMNS) + "\n")
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        fields = []
        for col in COLUMNS:
            value = row[col]
            fields.append(f"{value:.6g}" if isinstance(value, float) else str(value))
        self._fh.write("\t".join(fields) + "\n")
        self._fh.flush()
        self.done.add(int(row["idx"]))

    def close(self) -> None:
        self._fh.close()


def load_rows(run_dir: Path) -> pd.DataFrame:
    """All rows of a run with ``purifier`` and ``sigma`` columns added, from the files config.json lists."""
    config = json.loads((run_dir / CONFIG).read_text())
    frames = []
    for entry in config["files"]:
        path = run_dir / entry["file"]
        if path.exists():
            df = pd.read_csv(path, sep="\t")
            frames.append(df.assign(purifier=entry["purifier"], sigma=entry["sigma"]))
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "purifier", "sigma"])
    return pd.concat(frames, ignore_index=True)


def summarize(rows: pd.DataFrame, radii: Iterable[float] = RADII) -> pd.DataFrame:
    """Per purifier and σ: certified accuracy at each radius (correct and radius ≥ r), average certified
    radius (mean of radius·correct), mean seconds per image and mean NFE per noisy sample."""
    radii = tuple(radii)

    def per_group(g: pd.DataFrame) -> pd.Series:
        ok = g["correct"].astype(bool)
        out = {"images": len(g)}
        out.update({f"acc@{r:g}": float((ok & (g["radius"] >= r)).mean()) for r in radii})
        out["acr"] = float((g["radius"] * ok).mean())
        out["sec_per_image"] = float(g["time"].mean())
        out["nfe"] = float(g["nfe"].mean())
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
    summary = summarize(load_rows(run_dir))
    summary.to_csv(run_dir / "summary.csv", index=False)
    (run_dir / "summary.md").write_text(format_summary(summary) + "\n")
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
    return shown.to_markdown(index=False)
