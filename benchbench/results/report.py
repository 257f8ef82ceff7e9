"""The paper table, the Pareto front and paired significance tests, as pure functions over a run's rows.

Input is the rows DataFrame of :func:`benchbench.results.rundir.load_rows` (columns ``idx label predict radius
correct time pa_lower nfe n purifier sigma``). An image is *certified at radius r* when ``correct == 1``
and ``radius >= r``; every accuracy below is that fraction over the run's images. Only
:func:`write_report` and :func:`load_run_rows` touch the disk.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom, binomtest

from benchbench.errors import BenchError, InvalidArgument, UnknownName
from benchbench.results.rundir import RADII, certification_note, load_rows, read_config, run_radii, summarize, \
    write_atomic

PARETO_MARK = "†"
QUALITY_FILE = "quality.csv"


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper–Pearson interval for a proportion from ``k`` successes in ``n`` trials.

    Each tail holds at most (1 − level)/2; the low end is 0 when k = 0 and the high end 1 when k = n.
    Raises InvalidArgument unless 0 ≤ k ≤ n, n ≥ 1 and 0 < level < 1.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1 and 0 <= k <= n):
        raise InvalidArgument(f"need integers 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise InvalidArgument(f"level must lie strictly between 0 and 1, got {level}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def selection_interval(ks: Sequence[int], n: int | Sequence[int], level: float = 0.95,
                       cells: int | None = None) -> tuple[float, float]:
    """An interval for max_σ p_σ, the best-over-σ accuracy, that stays valid although σ is chosen after
    seeing the data: exact Clopper–Pearson intervals [L_σ, U_σ] for each cell, each over its own image
    count, at level 1 − (1 − level)/m (Bonferroni over m = ``cells`` σs, default len(ks); pass the planned
    number when some cells have no rows), reported as [max L_σ, max U_σ].

    With probability ≥ ``level`` every p_σ lies in its interval at once, and then max_σ p_σ lies in
    [max L_σ, max U_σ]. ``ks``: certified counts per σ; ``n``: images per σ (one number when equal).
    """
    if len(ks) == 0:
        raise InvalidArgument("selection_interval needs at least one cell")
    ns = [n] * len(ks) if isinstance(n, (int, np.integer)) else list(n)
    if len(ns) != len(ks):
        raise InvalidArgument(f"selection_interval needs one image count per cell, got {len(ns)} for {len(ks)}")
    per_cell = 1 - (1 - level) / max(len(ks), cells or 0)
    bounds = [binomial_interval(int(k), int(m), per_cell) for k, m in zip(ks, ns)]
    return max(b[0] for b in bounds), max(b[1] for b in bounds)


def false_certificate_bound(images: int, alpha: float, delta: float = 0.05) -> int:
    """m such that, with probability ≥ 1 − δ, at most m of the certificates issued to ``images`` images
    are wrong.

    CERTIFY issues a wrong certificate for an image with probability ≤ α, whether or not it abstains, and
    independently across images (Cohen et al. 2019), so the number of wrong certificates among N images is
    stochastically at most Binomial(N, α) — over all N images, not over the k certified ones: k itself
    depends on which certificates are wrong. m is that distribution's (1 − δ) quantile: the smallest m
    with P(Binomial(N, α) ≤ m) ≥ 1 − δ.
    """
    if images == 0:
        return 0
    return int(binom.ppf(1 - delta, images, alpha))


def alpha_aware_lower(ks: Sequence[int], ns: Sequence[int], alpha: float, delta: float = 0.05,
                      cells: int | None = None) -> list[float]:
    """Per cell (σ), a lower bound on the fraction of its ``ns[i]`` images that hold a *correct*
    certificate, given ``ks[i]`` issued (certified) ones: (k − m)/N, at least 0, with m from
    :func:`false_certificate_bound` at δ/m_σ for m_σ = ``cells`` σs (Bonferroni; default len(ks)).

    With probability ≥ 1 − δ the bounds hold for every cell at once, so also for a σ chosen after seeing
    the data, and at every radius (a correct certificate stays correct at every smaller radius).
    """
    share = delta / max(len(ks), cells or 0)
    return [max(0, int(k) - false_certificate_bound(int(n), alpha, share)) / int(n) for k, n in zip(ks, ns)]


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Which rows are Pareto-optimal when a lower ``x`` (cost) and a higher ``y`` (robustness) are better.

    Row i is dominated when some row j has x_j ≤ x_i and y_j ≥ y_i with at least one of the two strict;
    the front is every row that is not dominated. Rows with identical (x, y) do not dominate each other,
    so exact ties are all on the front (or all off it). A row with NaN in x or y is never on the front and
    dominates nothing. Returns a boolean Series aligned with ``df.index``, named ``"pareto"``.
    """
    xs = df[x].to_numpy(dtype=float)
    ys = df[y].to_numpy(dtype=float)
    valid = ~(np.isnan(xs) | np.isnan(ys))
    # dominates[j, i]: row j dominates row i (all pairs at once; tables here have tens of rows).
    no_worse = (xs[:, None] <= xs[None, :]) & (ys[:, None] >= ys[None, :])
    better = (xs[:, None] < xs[None, :]) | (ys[:, None] > ys[None, :])
    dominates = no_worse & better & valid[:, None]
    return pd.Series(valid & ~dominates.any(axis=0), index=df.index, name="pareto")


def _certified(rows: pd.DataFrame, radius: float) -> pd.Series:
    return (rows["correct"].astype(int) == 1) & (rows["radius"] >= radius)


def _run_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["purifier"]))


def per_sigma(rows: pd.DataFrame, radii: Iterable[float] = RADII) -> pd.DataFrame:
    """:func:`benchbench.results.rundir.summarize` (one row per (purifier, σ)) plus ``certified@r``, the count
    behind each ``acc@r``, which the exact intervals need."""
    radii = tuple(radii)
    out = summarize(rows, radii)
    for r in radii:
        out[f"certified@{r:g}"] = (out[f"acc@{r:g}"] * out["images"]).round().astype(int)
    return out


def paper_table(rows: pd.DataFrame, radii: Sequence[float] = RADII, quality: pd.DataFrame | None = None,
                level: float = 0.95, expected_images: int | None = None, alpha_aware: float | None = None,
                alpha: float | Mapping[str, float | None] | None = None,
                planned: Sequence[tuple[str, float]] | None = None,
                note: str | None = None) -> pd.DataFrame:
    """One row per purifier configuration, in run order, with best-over-σ numbers.

    ``planned``: every (purifier, σ) cell of the run (config.json's files); a cell with no rows is shown as
    missing (``missing``: its σs) rather than taken for never planned, a configuration with no rows at all
    still gets a row (NaN numbers), and the Bonferroni corrections below count every planned σ.

    For each radius r: ``acc@r`` (certified accuracy, a fraction of the cell's own images, at the σ that
    maximises it; ties go to the smallest σ), ``acc@r_sigma`` (that σ) and ``acc@r_low``/``acc@r_high``:
    an interval for the best σ's accuracy that is valid under that selection (:func:`selection_interval`:
    per-σ exact intervals, each over that cell's image count, at level 1 − (1 − ``level``)/|Σ|, reported
    as [max L, max U]; with one σ, the plain exact interval).
    With ``alpha_aware`` = δ, also ``acc@r_hp``: with probability ≥ 1 − δ at least that fraction of the
    best cell's images hold a correct certificate (:func:`alpha_aware_lower` over the configuration's
    σs, with ``alpha``: the run's α, or one per label; NaN where it is None). ``acr`` is the best-over-σ
    average certified radius and ``acr_sigma`` its σ. ``nfe`` (network calls per noisy sample) and
    ``sec_per_image`` are means over all of the configuration's rows, every σ: the cost of the
    configuration, whatever σ is deployed.

    ``pareto`` marks the front of (``sec_per_image`` lower is better, ``acr`` higher is better): seconds
    rather than NFE because NFE ignores what a call costs (a 1-call purifier with a huge network is not
    cheap) and purifiers without networks all have NFE 0; ACR rather than one radius because it summarises
    the whole accuracy-vs-radius curve. Selecting the best σ per cell is optimistic (it is what papers
    report); the per-σ numbers are in ``summary.csv``.

    ``quality`` (the :mod:`benchbench.results.quality` table) adds, per σ, ``mse@σ=s``, ``distance@σ=s``,
    ``ssim@σ=s``, ``psnr@σ=s`` (each when measured) and ``label_kept@σ=s``. ``images`` and ``images_min`` are
    the largest and smallest number of images in the configuration's σ cells (0 for a missing cell);
    ``images_expected`` is the run's image count (when given): a partial run shows them (see
    :func:`coverage_warning`). ``note`` (a sequential run's
    :func:`benchbench.results.rundir.certification_note`) is kept in ``table.attrs["note"]`` and printed under
    the table. Raises BenchError when ``rows`` is empty.
    """
    if rows.empty:
        raise BenchError("the run has no rows yet; nothing to report")
    if alpha_aware is not None and (alpha is None or not 0 < alpha_aware < 1):
        raise InvalidArgument(f"alpha-aware accuracy needs the run's α and 0 < δ < 1, got δ={alpha_aware}")
    cells = per_sigma(rows, radii)
    planned = list(planned or [])
    labels = list(dict.fromkeys([lab for lab, _ in planned] + _run_order(rows)))
    table = []
    for label in labels:
        mine = cells[cells["purifier"] == label].sort_values("sigma", kind="stable")
        present = [float(x) for x in mine["sigma"]]
        missing = sorted({float(sg) for lab, sg in planned if lab == label} - set(present))
        m = len(present) + len(missing)  # every planned σ: selection could have gone to any of them
        most = int(mine["images"].max()) if len(mine) else 0
        rec: dict[str, object] = {"purifier": label, "images": most,
                                  "images_min": 0 if missing or mine.empty else int(mine["images"].min()),
                                  "images_expected": int(expected_images or most),
                                  "missing": ",".join(f"{x:g}" for x in missing)}
        cell_alpha = alpha.get(label) if isinstance(alpha, Mapping) else alpha
        for r in radii:
            key = f"acc@{r:g}"
            if mine.empty:
                rec.update({key: math.nan, f"{key}_sigma": math.nan, f"{key}_low": math.nan,
                            f"{key}_high": math.nan})
                if alpha_aware is not None:
                    rec[f"{key}_hp"] = math.nan
                continue
            pos = int(np.argmax(mine[key].to_numpy()))  # the first maximum: the smallest σ
            best = mine.iloc[pos]
            rec[key] = float(best[key])
            rec[f"{key}_sigma"] = float(best["sigma"])
            ks, ns = mine[f"certified@{r:g}"].tolist(), mine["images"].tolist()
            rec[f"{key}_low"], rec[f"{key}_high"] = selection_interval(ks, ns, level, cells=m)
            if alpha_aware is not None:
                rec[f"{key}_hp"] = (math.nan if cell_alpha is None else
                                    alpha_aware_lower(ks, ns, cell_alpha, alpha_aware, cells=m)[pos])
        g = rows[rows["purifier"] == label]
        if mine.empty:
            rec.update(acr=math.nan, acr_sigma=math.nan, nfe=math.nan, sec_per_image=math.nan)
        else:
            best = mine.iloc[int(np.argmax(mine["acr"].to_numpy()))]
            rec["acr"], rec["acr_sigma"] = float(best["acr"]), float(best["sigma"])
            rec["nfe"] = float(g["nfe"].mean())
            rec["sec_per_image"] = float(g["time"].mean())
        table.append(rec)
    out = pd.DataFrame(table)
    out["pareto"] = pareto_front(out, "sec_per_image", "acr")
    if quality is not None and not quality.empty:
        out = out.merge(_quality_wide(quality), on="purifier", how="left")
    if alpha_aware is not None:
        out.attrs["alpha_aware"] = alpha_aware  # the legend states the level
    if note:
        out.attrs["note"] = note
    return out


def table_radii(table: pd.DataFrame) -> tuple[float, ...]:
    """The radii a paper table has columns for (``acc@r``), in column order."""
    return tuple(float(c[4:]) for c in table.columns if re.fullmatch(r"acc@[0-9.e+-]+", c))


def coverage_warning(table: pd.DataFrame, sigmas: int | None = None) -> str | None:
    """None when every cell of the table covers the run's images; otherwise one sentence saying which
    purifiers are partial, over how many images their cells are, and which planned cells have no rows."""
    short = table[(table["images_min"] < table["images_expected"]) | (table["images"] < table["images_expected"])]
    if short.empty:
        return None
    parts = []
    for r in short.itertuples():
        missing = getattr(r, "missing", "")
        if r.images == 0:
            parts.append(f"{r.purifier} no rows at all")
            continue
        parts.append(f"{r.purifier} {_range(r.images_min, r.images)} of {r.images_expected}"
                     + (f", no rows at σ={missing.replace(',', ', ')}" if missing else ""))
    return ("partial run: cells cover fewer images than the run has (" + "; ".join(parts) +
            "); each cell's accuracy and interval are over its own images")


def _range(low: int, high: int) -> str:
    return f"{low}" if low == high else f"{low}–{high}"


def _quality_wide(quality: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in ("mse", "distance", "ssim", "psnr", "label_kept") if c in quality.columns]
    wide = quality.pivot(index="purifier", columns="sigma", values=metrics)
    wide.columns = [f"{metric}@σ={sigma:g}" for metric, sigma in wide.columns]
    return wide.reset_index()


# --- writers -------------------------------------------------------------------------------------------


def _pct(p: float) -> str:
    return f"{100 * p:.1f}"


def _seconds(s: float) -> str:
    return f"{s:.3g}" if math.isfinite(s) else "–"


def _display(table: pd.DataFrame, radii: Sequence[float], latex: bool) -> pd.DataFrame:
    """The table as strings: accuracy cells ``87.5 (σ=0.5) [73.2, 95.8]``, Pareto rows marked."""
    sig = r"$\sigma$=" if latex else "σ="
    shown = pd.DataFrame()
    labels = [_latex_escape(s) if latex else s for s in table["purifier"]]
    if latex:
        shown["purifier"] = [rf"\textbf{{{s}}}$^\dagger$" if p else s for s, p in zip(labels, table["pareto"])]
    else:
        shown["purifier"] = [f"{s} {PARETO_MARK}" if p else s for s, p in zip(labels, table["pareto"])]
    for r in radii:
        key = f"acc@{r:g}"
        col = f"r={r:g}"
        cells = []
        for _, row in table.iterrows():
            if not math.isfinite(row[key]):  # a configuration with no rows: nothing to show
                cells.append("–")
                continue
            interval = f"[{_pct(row[key + '_low'])}, {_pct(row[key + '_high'])}]"
            hp = ""
            if key + "_hp" in row.index:
                hp = f" ≥{_pct(row[key + '_hp'])}" if math.isfinite(row[key + "_hp"]) else " ≥–"
            if latex:
                hp = hp.replace("≥", r"$\geq$")
                cells.append(rf"{_pct(row[key])} {{\scriptsize ({sig}{row[key + '_sigma']:g}) {interval}{hp}}}")
            else:
                cells.append(f"{_pct(row[key])} ({sig}{row[key + '_sigma']:g}) {interval}{hp}")
        shown[col] = cells
    # Every row states its image count; a partial run shows each configuration's range of the run's count.
    if coverage_warning(table) is not None:
        shown["images"] = [f"{_range(lo, hi)}/{n}" for lo, hi, n in
                           zip(table["images_min"], table["images"], table["images_expected"])]
    else:
        shown["images"] = [str(n) for n in table["images"]]
    shown["ACR"] = [f"{a:.3f} ({sig}{s:g})" if math.isfinite(a) else "–"
                    for a, s in zip(table["acr"], table["acr_sigma"])]
    shown["NFE"] = [f"{v:.3g}" if math.isfinite(v) else "–" for v in table["nfe"]]
    shown["s/image"] = [_seconds(v) for v in table["sec_per_image"]]
    return shown


def _legend(table: pd.DataFrame, latex: bool) -> str:
    partial = coverage_warning(table) is not None
    images = (f"over the images in the images column (of {int(table['images_expected'].max())}; a partial run)"
              if partial else f"over {int(table['images'].max())} images")
    if latex:
        sigma, ell, pct, dagger, geq = r"$\sigma$", r"$\ell_2$", r"\%", r"$^\dagger$", r"$\geq$"
    else:
        sigma, ell, pct, dagger, geq = "σ", "ℓ2", "%", PARETO_MARK, "≥"
    hp = any(c.endswith("_hp") for c in table.columns)
    delta = float(table.attrs.get("alpha_aware", 0.05))
    return (f"Certified accuracy ({pct}) at {ell} radius r {images}, best over {sigma} (the {sigma} "
            f"that gave it), with a 95{pct} interval valid although {sigma} was chosen on the same data (exact "
            f"Clopper–Pearson per {sigma} at level 1 − 0.05/|{sigma}s|, reported as [max lower, max upper])"
            + (f"; {geq}x = α-aware bound: with probability ≥ {100 * (1 - delta):g}{pct}, at every radius and "
               f"σ at once, at least x{pct} of the cell's images hold a correct certificate (at most m of its N "
               f"images get a wrong one, m the 1 − {delta:g}/|{sigma}s| quantile of Binomial(N, α); "
               f"– where α is unknown)" if hp else "")
            + f"; ACR = average certified radius, best over {sigma}; NFE = network calls per noisy sample; s/image "
            f"= certification seconds per image. {dagger} = Pareto-optimal in (s/image, ACR).")


def _quality_long(table: pd.DataFrame) -> pd.DataFrame:
    """Quality columns of a merged table back to one row per (purifier, σ), for display."""
    keys = [c for c in table.columns if "@σ=" in c]
    if not keys:
        return pd.DataFrame()
    recs = []
    for _, row in table.iterrows():
        for sigma in dict.fromkeys(c.split("@σ=")[1] for c in keys):
            rec: dict[str, object] = {"purifier": row["purifier"], "σ": sigma}
            if f"mse@σ={sigma}" in table:
                rec["MSE"] = f"{row[f'mse@σ={sigma}']:.4f}"
            if f"distance@σ={sigma}" in table:
                rec["distance"] = f"{row[f'distance@σ={sigma}']:.4f}"
            if f"ssim@σ={sigma}" in table:
                rec["SSIM"] = f"{row[f'ssim@σ={sigma}']:.3f}"
            if f"psnr@σ={sigma}" in table:
                rec["PSNR (dB)"] = f"{row[f'psnr@σ={sigma}']:.2f}"
            if f"label_kept@σ={sigma}" in table:
                rec["label kept (%)"] = _pct(row[f"label_kept@σ={sigma}"])
            recs.append(rec)
    return pd.DataFrame(recs)


def _markdown(df: pd.DataFrame) -> str:
    # disable_numparse: tabulate would otherwise reformat numbers formatted here; labels left, numbers right.
    align = ("left",) + ("right",) * (len(df.columns) - 1)
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def format_markdown(table: pd.DataFrame, radii: Sequence[float] | None = None) -> str:
    """The paper table (and the purification-quality table, when merged in) as Markdown; ``radii``
    defaults to the table's own (:func:`table_radii`)."""
    radii = table_radii(table) if radii is None else radii
    text = _markdown(_display(table, radii, latex=False)) + "\n\n" + _legend(table, latex=False)
    if table.attrs.get("note"):
        text += f"\n\n**{table.attrs['note']}.**"
    warning = coverage_warning(table)
    if warning:
        text = f"**Warning — {warning}.**\n\n{text}"
    quality = _quality_long(table)
    if not quality.empty:
        measured = "MSE(purified, clean)" + (", distance" if "distance" in quality else "") + \
            (", SSIM, PSNR" if "SSIM" in quality else "")
        text += (f"\n\n### Purification quality\n\n{_markdown(quality)}\n\n{measured} averaged over the images "
                 "and their noisy copies; label kept = the classifier gives the purified copy the true label."
                 + (" SSIM and PSNR are distances no purifier was trained or selected on; the distance is the "
                    "dataset's LPIPS-style one (on digits the loss consistency-ft was fine-tuned on)."
                    if "SSIM" in quality else ""))
    return text


def format_latex(table: pd.DataFrame, radii: Sequence[float] | None = None) -> str:
    """The paper table as a booktabs ``tabular`` (pandas DataFrame.to_latex), its legend (and a sequential
    run's note) as a comment."""
    radii = table_radii(table) if radii is None else radii
    shown = _display(table, radii, latex=True)
    shown.columns = [_latex_escape(c) for c in shown.columns]
    body = shown.to_latex(index=False, escape=False, column_format="l" + "r" * (len(shown.columns) - 1))
    note = f"% {table.attrs['note']}.\n" if table.attrs.get("note") else ""
    return f"% {_legend(table, latex=True)}\n{note}{body}"


def _latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(text))


# --- McNemar -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemarResult:
    """Paired exact McNemar test of purifiers a and b at one σ and radius over ``n`` shared images.

    b01: images a fails and b certifies; b10: images a certifies and b fails. pvalue: two-sided exact
    binomial test of b01 against Binomial(b01 + b10, ½); 1.0 when there is no discordant pair.
    """

    a: str
    b: str
    sigma: float
    radius: float
    n: int
    b01: int
    b10: int
    pvalue: float

    @property
    def smallest_pvalue(self) -> float:
        """The smallest p-value the test can give with this many paired images (all of them discordant, one
        way): a difference cannot be shown at any level below it."""
        return min(1.0, 2 * 0.5**self.n)

    def warning(self, level: float = 0.05) -> str | None:
        """A sentence when there are too few images for the test to ever reach ``level``."""
        if self.smallest_pvalue > level:
            return (f"only {self.n} paired images: the smallest p-value this test can give is "
                    f"{self.smallest_pvalue:.3g}, so no difference can be shown at {level:g}; certify more images")
        return None

    def __str__(self) -> str:
        return (f"{self.a} vs {self.b} at σ={self.sigma:g}, r={self.radius:g}, {self.n} paired images: "
                f"only {self.b} certifies {self.b01}, only {self.a} certifies {self.b10}; "
                f"exact McNemar p = {self.pvalue:.4g}")


def _check_label(rows: pd.DataFrame, label: str) -> None:
    known = _run_order(rows)
    if label not in known:
        close = difflib.get_close_matches(label, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownName(f"no purifier {label!r} in this run{hint} (available: {', '.join(known) or 'none'})")


def mcnemar_exact(rows: pd.DataFrame, a: str, b: str, sigma: float, radius: float) -> McNemarResult:
    """Exact McNemar test between purifier labels ``a`` and ``b`` at ``sigma``, where an image is a success
    when it is certified at ``radius`` (correct and radius ≥ r), paired on the image indices both have.

    Raises UnknownName for a label that is not in the run and InvalidArgument for a σ that is not (both
    list what is available), a negative radius, or no shared image.
    """
    _check_label(rows, a)
    _check_label(rows, b)
    if not (math.isfinite(radius) and radius >= 0):
        raise InvalidArgument(f"radius must be a finite number >= 0, got {radius}")
    sigmas = sorted(rows["sigma"].unique())
    match = [s for s in sigmas if math.isclose(s, sigma, rel_tol=1e-9, abs_tol=1e-12)]
    if not match:
        raise InvalidArgument(f"sigma {sigma:g} is not in this run (available: {', '.join(f'{s:g}' for s in sigmas)})")
    at = rows[np.isclose(rows["sigma"], match[0])]

    def success(label: str) -> pd.Series:
        mine = at[at["purifier"] == label]
        return _certified(mine, radius).set_axis(mine["idx"].to_numpy())

    sa, sb = success(a), success(b)
    shared = sa.index.intersection(sb.index)
    if len(shared) == 0:
        raise InvalidArgument(f"{a!r} and {b!r} share no image at sigma {sigma:g}")
    sa, sb = sa.loc[shared], sb.loc[shared]
    b01, b10 = int((~sa & sb).sum()), int((sa & ~sb).sum())
    p = 1.0 if b01 + b10 == 0 else float(binomtest(b01, b01 + b10, 0.5).pvalue)
    return McNemarResult(a, b, float(match[0]), float(radius), len(shared), b01, b10, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: with p₍₁₎ ≤ … ≤ p₍ₘ₎, the adjusted p₍ᵢ₎ is
    max_{j ≤ i} min(1, (m − j + 1)·p₍ⱼ₎). A hypothesis is rejected at family-wise level a when its adjusted
    p ≤ a. Written out: scipy has no Holm (only Benjamini–Hochberg), and statsmodels would be a dependency
    for these few lines."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairVerdict:
    """One pair of a family of McNemar tests, with its Holm-adjusted p-value and whether it survives."""

    test: McNemarResult
    p_holm: float
    significant: bool

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return f"{self.test}; Holm-adjusted p = {self.p_holm:.4g} ({verdict})"


def compare_pairs(rows: pd.DataFrame, pairs: Sequence[tuple[str, str]], sigma: float, radius: float,
                  family_alpha: float = 0.05) -> list[PairVerdict]:
    """Exact McNemar tests of every pair at one σ and radius, with Holm's correction over the pairs so that
    the chance of any false "significant" stays ≤ ``family_alpha``."""
    if not 0 < family_alpha < 1:
        raise InvalidArgument(f"family alpha must lie strictly between 0 and 1, got {family_alpha}")
    tests = [mcnemar_exact(rows, a, b, sigma, radius) for a, b in pairs]
    adjusted = holm([t.pvalue for t in tests])
    return [PairVerdict(t, p, p <= family_alpha) for t, p in zip(tests, adjusted)]


# --- the run directory ---------------------------------------------------------------------------------


def load_run_rows(run_dir: Path | str) -> pd.DataFrame:
    """``load_rows``: every row checked, a BenchError (not a traceback) for a directory that is not a run
    or a row that is not valid."""
    return load_rows(Path(run_dir))


def write_report(run_dir: Path | str, radii: Sequence[float] | None = None,
                 alpha_aware: float | None = None) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.tex`` into ``run_dir`` and return the table.

    ``radii`` defaults to the run's (:func:`benchbench.results.rundir.run_radii`: a sequential run's grid);
    a sequential run's table says so under it (``table.attrs["note"]``).

    ``quality.csv``, when the run directory has one, is merged in (see :func:`paper_table`);
    ``alpha_aware`` = δ adds Cohen et al.'s α-aware certified accuracy with probability ≥ 1 − δ.
    """
    run_dir = Path(run_dir)
    rows = load_run_rows(run_dir)
    quality = pd.read_csv(run_dir / QUALITY_FILE) if (run_dir / QUALITY_FILE).is_file() else None
    config = read_config(run_dir)
    experiment = config["experiment"]
    expected = len(experiment.get("image_indices") or []) or None
    # Imported rows were certified elsewhere, at the α their import recorded (None: unknown).
    alphas = {f["purifier"]: (f["imported"].get("alpha") if isinstance(f.get("imported"), dict)
                              else experiment.get("alpha")) for f in config["files"]}
    if alpha_aware is not None and all(a is None for a in alphas.values()):
        raise InvalidArgument("--alpha-aware needs the α the certificates were issued at, and this run records "
                              "none (import with --alpha)")
    radii = run_radii(experiment) if radii is None else tuple(radii)
    table = paper_table(rows, radii, quality=quality, expected_images=expected, alpha_aware=alpha_aware,
                        alpha=alphas, planned=[(f["purifier"], float(f["sigma"])) for f in config["files"]],
                        note=certification_note(experiment))
    write_atomic(run_dir / "report.csv", table.to_csv(index=False))
    write_atomic(run_dir / "report.md", format_markdown(table, radii) + "\n")
    write_atomic(run_dir / "report.tex", format_latex(table, radii))
    return table
