"""Paper figures: the cost/robustness Pareto plot, certified accuracy vs radius, and a purification grid.

Figures are single-column width (3.4 in) with 7–8 pt fonts, built on ``matplotlib.figure.Figure`` (no
pyplot state, no GUI backend: Agg renders the PNG, matplotlib's SVG backend the SVG) with a seaborn
theme. Every ``plot_*`` writes ``out`` with each suffix in ``formats`` and returns the paths written.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from benchbench.errors import InvalidArgument
from benchbench.results.report import load_run_rows, pareto_front
from benchbench.results.rundir import CONFIG, certification, read_config

WIDTH = 3.4  # inches: one column of a two-column paper
FORMATS = ("png", "svg")
NFE_FLOOR = 0.1  # where NFE 0 (no network) sits on the log axis
SECONDS_FLOOR = 1e-6
SIGMA_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
BEST_MARKER = "*"
COSTS = ("seconds", "nfe")
ROBUSTNESS = ("acr", "acc")

Source = Union[pd.DataFrame, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _theme() -> dict[str, Any]:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    rc.update({"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "xtick.labelsize": 7,
               "ytick.labelsize": 7, "legend.fontsize": 6.5, "legend.title_fontsize": 7, "savefig.dpi": 300,
               "svg.fonttype": "none"})  # SVG text stays text
    return rc


def _save(fig: Figure, out: Path | str, formats: Sequence[str]) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out.with_suffix("." + fmt)
        # Through a temporary file and a rename: an interrupted plot leaves the previous figure intact.
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def display_label(label: str, width: int = 28) -> str:
    """A purifier label short enough for a figure: path-like parameter values become their last
    component, and anything longer than ``width`` characters is cut with an ellipsis."""
    short = re.sub(r"=([^,()]*[/\\][^,()]*)", lambda m: "=" + Path(m.group(1).rstrip("/\\")).name, label)
    return short if len(short) <= width else short[: width - 1] + "…"


# --- Pareto ---------------------------------------------------------------------------------------------


def short_device(name: str) -> str:
    """A device name short enough for a legend: ``NVIDIA H100 80GB HBM3`` → ``H100 80GB``."""
    words = re.sub(r"^(NVIDIA|AMD|Intel\(R\))\s+", "", name).replace("GeForce ", "").split()
    return " ".join(words[:2]) or name


def _sources(rows_or_run_dirs: Source) -> list[tuple[pd.DataFrame, str, str]]:
    """(rows, device label, run name) for a rows DataFrame, one run directory, or several."""
    if isinstance(rows_or_run_dirs, pd.DataFrame):
        return [(rows_or_run_dirs, "", "")]
    dirs = [rows_or_run_dirs] if isinstance(rows_or_run_dirs, (str, os.PathLike)) else list(rows_or_run_dirs)
    if not dirs:
        raise InvalidArgument("no run directory given")
    out = []
    for d in map(Path, dirs):
        rows = load_run_rows(d)
        env = json.loads((d / CONFIG).read_text()).get("environment", {})
        out.append((rows, str(env.get("device_name") or env.get("device") or "unknown device"), d.name))
    return out


def certification_title(rows_or_run_dirs: Source) -> str | None:
    """A figure title for runs certified sequentially (None for rows or fixed runs only): the mode, and
    that ACR is capped by the grid. Several runs of different modes are named as such."""
    if isinstance(rows_or_run_dirs, pd.DataFrame):
        return None
    dirs = [rows_or_run_dirs] if isinstance(rows_or_run_dirs, (str, os.PathLike)) else list(rows_or_run_dirs)
    records = [certification(read_config(Path(d))["experiment"]) for d in dirs]
    sequential = [r for r in records if r is not None]
    if not sequential:
        return None
    grid = ", ".join(f"{float(r):g}" for r in sequential[0]["radii"])
    which = "sequential certification" if len(sequential) == len(records) else \
        f"{len(sequential)} of {len(records)} runs sequential"
    return f"{which} at radii {grid}: ACR capped by the grid"


def load_timings(path: Path | str) -> tuple[dict[str, float], str]:
    """Mean seconds per call of each purifier's benchmark in a pytest-benchmark ``--benchmark-json`` file,
    keyed by purifier label (``extra_info["purifier"]``, else ``params["purifier"]``), and a description
    of what one call is (from ``extra_info`` batch size, σ and device) for the axis label."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        benchmarks = data["benchmarks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{path} is not a pytest-benchmark JSON file ({exc})") from None
    timings: dict[str, float] = {}
    what: set[str] = set()
    for bm in benchmarks:
        extra, params = bm.get("extra_info") or {}, bm.get("params") or {}
        label = extra.get("purifier") or params.get("purifier")
        if label is None or "stats" not in bm:
            continue
        timings[str(label)] = float(bm["stats"]["mean"])
        if "batch_size" in extra:
            what.add(f"batch of {extra['batch_size']}" + (f", {extra['device']}" if extra.get("device") else ""))
    if not timings:
        raise InvalidArgument(f"{path} holds no benchmark with a purifier label in extra_info or params")
    return timings, (next(iter(what)) if len(what) == 1 else "one call")


def pareto_points(rows_or_run_dirs: Source, cost: str = "seconds", robustness: str = "acr", radius: float = 0.5,
                  timings: Path | str | None = None) -> pd.DataFrame:
    """The points of the Pareto plot, one per purifier configuration and σ (``kind == "sigma"``) plus one
    max-over-σ envelope point per configuration (``kind == "best"``, σ NaN).

    Columns: ``config`` (the purifier label, with ``[device]`` (:func:`short_device`) appended when the
    sources span several devices, and ``(run)`` when a label and device still repeat), ``purifier``, ``device``, ``sigma``,
    ``kind``, ``cost``, ``robustness`` and ``pareto``.

    cost: ``seconds`` = mean certification seconds per image, ``nfe`` = network calls per noisy sample;
    with ``timings`` (a pytest-benchmark JSON file) every point of a configuration costs its benchmark's
    mean seconds per call instead, and configurations without a benchmark are left out with a warning.
    The envelope point is the configuration's best σ point (ties: the smallest σ). robustness: ``acr`` = average
    certified radius, ``acc`` = certified accuracy (%) at ``radius``.

    ``pareto`` is :func:`benchbench.results.report.pareto_front` over the per-σ points only — they are the
    operating points one can deploy; an envelope point is a summary of them and is never marked.
    """
    if cost not in COSTS:
        raise InvalidArgument(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if robustness not in ROBUSTNESS:
        raise InvalidArgument(f"robustness must be one of {', '.join(ROBUSTNESS)}, got {robustness!r}")
    if not (math.isfinite(radius) and radius >= 0):
        raise InvalidArgument(f"radius must be a finite number >= 0, got {radius}")
    sources = _sources(rows_or_run_dirs)
    bench = load_timings(timings)[0] if timings is not None else None
    several_devices = len({dev for _, dev, _ in sources}) > 1
    seen: set[str] = set()
    recs: list[dict[str, Any]] = []
    skipped: list[str] = []
    unknown: list[str] = []
    for rows, device, run in sources:
        for label in dict.fromkeys(rows["purifier"]):
            key = f"{label} [{short_device(device)}]" if several_devices else label
            if key in seen:
                key = f"{key} ({run})"
            seen.add(key)
            if bench is not None and label not in bench:
                skipped.append(label)
                continue
            mine = rows[rows["purifier"] == label]

            def measure(g: pd.DataFrame) -> tuple[float, float]:
                if bench is not None:
                    c = bench[label]
                else:
                    c = float(g["time"].mean()) if cost == "seconds" else float(g["nfe"].mean())
                ok = g["correct"].astype(int) == 1
                rob = float((g["radius"] * ok).mean()) if robustness == "acr" else \
                    100 * float((ok & (g["radius"] >= radius)).mean())
                return c, rob

            base = {"config": key, "purifier": label, "device": device}
            per = [{**base, "sigma": float(s), "kind": "sigma", **dict(zip(("cost", "robustness"), measure(g)))}
                   for s, g in mine.groupby("sigma", sort=True)]
            if any(math.isnan(p["cost"]) for p in per):  # e.g. imported published rows carry no NFE
                unknown.append(label)
                continue
            recs += per
            top = max(per, key=lambda p: p["robustness"])  # max() keeps the first maximum: the smallest σ
            recs.append({**base, "sigma": math.nan, "kind": "best", "cost": top["cost"],
                         "robustness": top["robustness"]})
    if skipped:
        warnings.warn(f"no benchmark timing for {', '.join(dict.fromkeys(skipped))}; left out of the plot",
                      stacklevel=2)
    if unknown:
        warnings.warn(f"no {cost} recorded for {', '.join(dict.fromkeys(unknown))}; left out of the plot",
                      stacklevel=2)
    if not recs and unknown:
        raise InvalidArgument(f"nothing to plot: no {cost} recorded for {', '.join(dict.fromkeys(unknown))}")
    if not recs:
        raise InvalidArgument("nothing to plot: no purifier of the run has a benchmark timing" if bench is not None
                              else "nothing to plot: the run has no rows yet")
    points = pd.DataFrame(recs)
    is_sigma = points["kind"] == "sigma"
    points["pareto"] = False
    points.loc[is_sigma, "pareto"] = pareto_front(points[is_sigma], "cost", "robustness")
    return points


def _x_label(cost: str, timings: Path | str | None) -> str:
    if timings is not None and cost == "seconds":
        return f"purifier latency (s per {load_timings(timings)[1]}, pytest-benchmark)"
    if cost == "nfe":
        return f"NFE per noisy sample (0 plotted at {NFE_FLOOR:g})"
    return "certification time (s per image)"


def _draw_pareto(ax: Any, points: pd.DataFrame, colors: dict[str, Any], markers: dict[float, str]) -> None:
    """One panel: every point, the front as a step line, the best-σ stars labelled without overlaps."""
    from adjustText import adjust_text

    ax.set_xscale("log")
    front = points[points["pareto"]].sort_values(["x", "robustness"], ascending=[True, False])
    if len(front):
        fx = list(front["x"]) + [points["x"].max()]
        fy = list(front["robustness"]) + [front["robustness"].iloc[-1]]
        ax.step(fx, fy, where="post", color="0.35", lw=1, ls="--", zorder=1)
    texts, anchors_x, anchors_y = [], [], []
    for _, p in points.iterrows():
        best = p["kind"] == "best"
        # The star (best σ) sits under that σ's own marker, which stays visible on top of it.
        ax.scatter(p["x"], p["robustness"], color=colors[p["config"]], zorder=2 if best else 3,
                   marker=BEST_MARKER if best else markers[p["sigma"]], s=110 if best else 22,
                   edgecolor="black" if p["pareto"] else "none", linewidth=0.7, alpha=0.45 if best else 0.9)
        if best:
            texts.append(ax.text(p["x"], p["robustness"], display_label(p["config"], 28), fontsize=6))
        anchors_x.append(p["x"])
        anchors_y.append(p["robustness"])
    # The default 3×10⁻¹-style minor labels collide at this width: plain numbers at 1-2-5 steps for a
    # narrow range, powers of ten (at most 6) for a wide one.
    decades = math.log10(points["x"].max() / points["x"].min())
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades < 1.5 else (1.0,), numticks=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}") if decades <= 3 else LogFormatterSciNotation())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.12)
    if texts:
        # adjustText moves the labels apart and off the markers, with a thin leader line to each star.
        adjust_text(texts, x=anchors_x, y=anchors_y, ax=ax, expand=(1.15, 1.3),
                    arrowprops=dict(arrowstyle="-", color="0.5", lw=0.4))
        # Labels (and their leader lines) never drive the layout: with flat data adjustText may push one
        # far out, which would squeeze the axes to nothing.
        for artist in ax.get_children():
            if isinstance(artist, mpl.text.Text) and artist not in (ax.title, ax._left_title, ax._right_title):
                artist.set_in_layout(False)


def plot_pareto(rows_or_run_dirs: Source, out: Path | str, cost: str = "both", robustness: str = "acr",
                radius: float = 0.5, timings: Path | str | None = None,
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Cost (log x) against robustness (y) for every point of :func:`pareto_points`: colour = purifier
    configuration, marker = σ, star = best over σ (labelled, labels kept apart by adjustText), the Pareto
    front as a step line. ``cost`` ``both`` (default) draws two panels, each with its own front: measured
    seconds (or ``timings`` latency) and NFE, since seconds on a shared machine are noisy."""
    costs = ("seconds", "nfe") if cost == "both" else (cost,)
    panels = [pareto_points(rows_or_run_dirs, c, robustness, radius, timings if c == "seconds" else None)
              for c in costs]
    ylabel = "average certified radius (ACR)" if robustness == "acr" else f"certified accuracy at r={radius:g} (%)"
    configs = list(dict.fromkeys(pd.concat(panels)["config"]))
    colors = dict(zip(configs, sns.color_palette("colorblind", len(configs))))
    sigmas = sorted(pd.concat(panels)["sigma"].dropna().unique())
    markers = {s: SIGMA_MARKERS[i % len(SIGMA_MARKERS)] for i, s in enumerate(sigmas)}

    with mpl.rc_context(_theme()):
        ncol = 2 * len(costs)
        legend_rows = -(-(len(configs) + len(sigmas) + 2) // ncol)
        fig = Figure(figsize=(WIDTH * len(costs), 2.4 + 0.16 * legend_rows), layout="constrained")
        axes = fig.subplots(1, len(costs), sharey=True, squeeze=False)[0]
        for ax, c, points in zip(axes, costs, panels):
            floor = NFE_FLOOR if c == "nfe" else SECONDS_FLOOR
            points["x"] = points["cost"].clip(lower=floor)
            _draw_pareto(ax, points, colors, markers)
            ax.set_xlabel(_x_label(c, timings))
        axes[0].set_ylabel(ylabel)
        handles = [Line2D([], [], ls="", marker="o", color=colors[c], label=display_label(c, 24)) for c in configs]
        handles += [Line2D([], [], ls="", marker=markers[s], color="0.4", label=f"σ={s:g}") for s in sigmas]
        handles += [Line2D([], [], ls="", marker=BEST_MARKER, ms=8, color="0.4", label="best over σ"),
                    Line2D([], [], color="0.35", ls="--", lw=1, label="Pareto front (outlined)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
        title = certification_title(rows_or_run_dirs)
        if title:
            fig.suptitle(title, fontsize=7)
        return _save(fig, out, formats)


# --- certified accuracy vs radius -----------------------------------------------------------------------


def _rows(rows: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else load_run_rows(Path(rows))


def plot_radius(rows: pd.DataFrame | str | os.PathLike, out: Path | str, formats: Sequence[str] = FORMATS,
                points: int = 400) -> list[Path]:
    """Certified accuracy (correct and radius ≥ r) against r on a grid from 0 to the largest certified
    radius, one step curve per purifier configuration, one panel per σ, stacked (Cohen et al.'s figure). A
    sequential run's figure is titled so: its curves are decided at the grid radii only."""
    title = certification_title(rows)
    rows = _rows(rows)
    if rows.empty:
        raise InvalidArgument("nothing to plot: the run has no rows yet")
    labels = list(dict.fromkeys(rows["purifier"]))
    colors = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    sigmas = sorted(rows["sigma"].unique())
    top = float(rows.loc[rows["correct"].astype(int) == 1, "radius"].max()) if (rows["correct"] == 1).any() else 0.0
    grid = np.linspace(0.0, max(top, 0.05) * 1.02, points)
    with mpl.rc_context(_theme()):
        fig = Figure(figsize=(WIDTH, 0.4 + 1.35 * len(sigmas)), layout="constrained")
        axes = fig.subplots(len(sigmas), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
        for ax, sigma in zip(axes, sigmas):
            at = rows[rows["sigma"] == sigma]
            for label in labels:
                g = at[at["purifier"] == label]
                if g.empty:
                    continue
                radii = g["radius"].to_numpy()[g["correct"].astype(int).to_numpy() == 1]
                acc = 100 * (radii[None, :] >= grid[:, None]).sum(1) / len(g)
                ax.plot(grid, acc, drawstyle="steps-post", color=colors[label], lw=1.2, label=display_label(label))
            ax.set_title(f"σ = {sigma:g}", loc="left", pad=2)
            ax.set_ylabel("cert. acc. (%)")
            ax.set_ylim(-3, 103)
        axes[-1].set_xlabel("ℓ2 radius r (image scale [0, 1])")
        handles, names = axes[0].get_legend_handles_labels()
        # a title takes the top, so the legend then goes below
        fig.legend(handles, names, loc=f"outside {'lower' if title else 'upper'} center", ncol=min(2, len(labels)),
                   frameon=False)
        if title:
            fig.suptitle(title, fontsize=7)
        return _save(fig, out, formats)


# --- purification grid ----------------------------------------------------------------------------------


def purification_grid(purifier_specs: Sequence[Any], dataset: str, sigmas: Sequence[float], indices: Sequence[int],
                      seed: int, device: str = "cpu", n0: int | None = None, data_dir: str | None = None,
                      classifier: str | None = None) -> dict[str, Any]:
    """Clean, noisy and purified versions of test images ``indices`` for :func:`plot_grid`.

    The noisy image at σ is the first noisy copy certification drew for that image (the noise generator
    for (seed, idx, σ); pass the run's ``n0`` to draw it exactly as certification's first block, see
    :func:`benchbench.results.quality.noisy_copies`), and a stochastic purifier gets that copy's own noise, so each
    purified image is the one certification classified; ``data_dir`` is where the dataset lives and
    ``classifier`` the run's classifier reference (for purifiers that use it). Returns
    ``{"indices": [...], "sigmas": [...], "clean": (K,C,H,W), "noisy": {σ: (K,C,H,W)},
    "purified": {label: {σ: (K,C,H,W)}}}`` with CPU tensors; values are not clipped.
    """
    import torch

    from benchbench.data.dataset import get_dataset
    from benchbench.models.classifiers import load_classifier
    from benchbench.results.quality import noisy_copies, purify_copies
    from benchbench.registry import get_purifier

    test = get_dataset(dataset, "test", data_dir=data_dir)
    base = load_classifier(classifier, device, dataset) if classifier else None
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
        raise InvalidArgument(f"image indices {bad} are outside the {dataset} test set (0..{len(test) - 1})")
    clean = test.images[list(indices)]
    noisy = {s: torch.cat([noisy_copies(clean[k], s, seed=seed, idx=idx, copies=1, n0=n0)
                           for k, idx in enumerate(indices)]) for s in sigmas}
    purified: dict[str, dict[float, Any]] = {}
    with torch.no_grad():
        for spec in purifier_specs:
            purifier = get_purifier(spec.name, **spec.params, device=device, dataset=dataset, classifier=base)
            purified[spec.label] = {}
            for s in sigmas:
                outs = []
                for k, idx in enumerate(indices):
                    out = purify_copies(purifier, spec.label, noisy[s][k : k + 1].to(device), s, seed=seed, idx=idx)
                    outs.append(out[:1].cpu())  # a purifier with votes: its first sample
                purified[spec.label][s] = torch.cat(outs)
    return {"indices": list(indices), "sigmas": list(sigmas), "clean": clean, "noisy": noisy, "purified": purified}


def grid_from_run(run_dir: Path | str, images: int = 4, device: str = "cpu",
                  only: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`purification_grid` for the first ``images`` images, the purifiers (those labelled in ``only``,
    default all), σs and seed of a run."""
    from benchbench.registry import PurifierSpec

    run_dir = Path(run_dir)
    load_run_rows(run_dir)  # a BenchError for a directory that is not a run
    if images < 1:
        raise InvalidArgument(f"images must be >= 1, got {images}")
    config = json.loads((run_dir / CONFIG).read_text())
    exp = config["experiment"]
    specs = [PurifierSpec(p["name"], p["params"]) for p in exp["purifiers"] if only is None or p["label"] in only]
    return purification_grid(specs, exp["dataset"], exp["sigmas"], exp["image_indices"][:images], exp["seed"], device,
                             n0=exp.get("n0"), data_dir=config.get("environment", {}).get("data_dir"),
                             classifier=(exp.get("classifier") or {}).get("ref"))


def _as_image(t: Any) -> np.ndarray:
    a = np.asarray(t, dtype=float).clip(0, 1)  # noisy images leave [0, 1]; show them saturated
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def plot_grid(images: dict[str, Any], out: Path | str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """An image grid from :func:`purification_grid`: one row per test image; columns clean, then for each
    σ the noisy image and every purifier's output. Pixels are shown clipped to [0, 1]."""
    columns: list[tuple[str, Any]] = [("clean", images["clean"])]
    for s in images["sigmas"]:
        columns.append((f"noisy σ={s:g}", images["noisy"][s]))
        columns += [(f"{display_label(label, 16)} σ={s:g}", by[s]) for label, by in images["purified"].items()]
    rows = len(images["clean"])
    cell = 0.34
    with mpl.rc_context(_theme()):
        fig = Figure(figsize=(max(WIDTH, cell * len(columns) + 0.3), cell * rows + 1.1))
        axes = fig.subplots(rows, len(columns), squeeze=False)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=1 - 1.05 / (cell * rows + 1.1),
                            wspace=0.06, hspace=0.06)
        for j, (title, batch) in enumerate(columns):
            for i in range(rows):
                ax = axes[i, j]
                ax.imshow(_as_image(batch[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            axes[0, j].set_title(title, rotation=70, fontsize=6, ha="left", va="bottom", rotation_mode="anchor",
                                 pad=3)
        for i, idx in enumerate(images["indices"]):
            axes[i, 0].set_ylabel(f"#{idx}", fontsize=6, rotation=0, ha="right", va="center")
        return _save(fig, out, formats)
