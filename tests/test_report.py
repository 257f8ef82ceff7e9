"""The reporting layer's numbers, recomputed independently: Pareto front, exact intervals, the paper table
from hand-read TSV rows, and the exact McNemar test against scipy's binomial distribution."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binom, norm

from benchbench.errors import BenchError, InvalidArgument, UnknownName
from benchbench.results.report import binomial_interval, mcnemar_exact, paper_table, pareto_front, write_report
from benchbench.results.rundir import load_rows
from synthetic_run import read_tsvs, standard_run, write_run

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


# --- Pareto front ---------------------------------------------------------------------------------------

def test_pareto_front_dominance():
    df = pd.DataFrame({"cost": [1, 2, 2, 3, 0.5, 4], "rob": [1, 2, 1, 2, 0, 3]},
                      index=list("ABCDEF"))
    # C is beaten by A (cheaper, as robust); D by B (same robustness, cheaper); the rest trade off.
    assert pareto_front(df, "cost", "rob").to_dict() == \
        {"A": True, "B": True, "C": False, "D": False, "E": True, "F": True}


def test_pareto_front_exact_ties_are_all_kept():
    df = pd.DataFrame({"cost": [1, 1, 2, 2], "rob": [5, 5, 1, 1]})
    # Identical optimal points stay optimal; identical dominated points are both dominated.
    assert pareto_front(df, "cost", "rob").tolist() == [True, True, False, False]


def test_pareto_front_tie_in_one_coordinate_is_dominated():
    df = pd.DataFrame({"cost": [1, 1], "rob": [5, 4]})
    assert pareto_front(df, "cost", "rob").tolist() == [True, False]


def test_pareto_front_single_point_and_nan():
    assert pareto_front(pd.DataFrame({"x": [3.0], "y": [0.0]}), "x", "y").tolist() == [True]
    df = pd.DataFrame({"x": [1.0, np.nan, 2.0], "y": [1.0, 9.0, 0.5]})
    assert pareto_front(df, "x", "y").tolist() == [True, False, False]


# --- exact binomial interval -----------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (37, 40), (1, 1)])
def test_binomial_interval_is_clopper_pearson(k, n):
    low_expected = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    high_expected = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    low, high = binomial_interval(k, n)
    assert low == pytest.approx(low_expected, abs=1e-9)
    assert high == pytest.approx(high_expected, abs=1e-9)


def test_binomial_interval_rejects_bad_counts():
    with pytest.raises(InvalidArgument):
        binomial_interval(5, 4)
    with pytest.raises(InvalidArgument):
        binomial_interval(0, 0)


# --- the paper table --------------------------------------------------------------------------------------

def _expected_table(run_dir):
    """Best-over-σ cells from the TSVs, with loops: (label → {radius: (acc, σ, k, n)}, acr, σ, sec, nfe)."""
    cells = read_tsvs(run_dir)
    out = {}
    for label in dict.fromkeys(lab for lab, _ in cells):
        sigmas = sorted(s for lab, s in cells if lab == label)
        acc = {}
        for r in RADII:
            best = None
            for s in sigmas:  # ascending: a later σ replaces only a strictly better one
                rows = cells[(label, s)]
                k = sum(1 for row in rows if row["correct"] == 1 and row["radius"] >= r)
                if best is None or k / len(rows) > best[0]:
                    best = (k / len(rows), s, k, len(rows))
            ks = [sum(1 for row in cells[(label, s)] if row["correct"] == 1 and row["radius"] >= r) for s in sigmas]
            acc[r] = (*best, ks)
        acrs = [(sum(row["radius"] * row["correct"] for row in cells[(label, s)]) / len(cells[(label, s)]), s)
                for s in sigmas]
        best_acr = max(acrs, key=lambda t: (t[0], -t[1]))
        every = [row for s in sigmas for row in cells[(label, s)]]
        out[label] = {"acc": acc, "acr": best_acr, "sec": sum(r["time"] for r in every) / len(every),
                      "nfe": sum(r["nfe"] for r in every) / len(every)}
    return out


def test_paper_table_matches_numbers_recomputed_from_the_tsvs(tmp_path):
    run = standard_run(tmp_path / "run")
    table = paper_table(load_rows(run)).set_index("purifier")
    expected = _expected_table(run)
    assert list(table.index) == ["identity", "ddpm", "slow(steps=10)"]  # run order
    for label, exp in expected.items():
        row = table.loc[label]
        for r, (acc, sigma, k, n, ks) in exp["acc"].items():
            assert row[f"acc@{r:g}"] == pytest.approx(acc)
            assert row[f"acc@{r:g}_sigma"] == sigma
            # Selection-valid: every σ's Clopper–Pearson interval at level 1 − 0.05/|Σ|, then [max L, max U].
            tail = 0.05 / len(ks) / 2
            lows = [0.0 if j == 0 else beta.ppf(tail, j, n - j + 1) for j in ks]
            highs = [1.0 if j == n else beta.ppf(1 - tail, j + 1, n - j) for j in ks]
            assert row[f"acc@{r:g}_low"] == pytest.approx(max(lows))
            assert row[f"acc@{r:g}_high"] == pytest.approx(max(highs))
        assert row["acr"] == pytest.approx(exp["acr"][0])
        assert row["acr_sigma"] == exp["acr"][1]
        assert row["sec_per_image"] == pytest.approx(exp["sec"])
        assert row["nfe"] == pytest.approx(exp["nfe"])
    # Pareto over (seconds, best ACR), by brute force.
    for a in expected:
        dominated = any(expected[b]["sec"] <= expected[a]["sec"] and expected[b]["acr"][0] >= expected[a]["acr"][0]
                        and (expected[b]["sec"] < expected[a]["sec"] or expected[b]["acr"][0] > expected[a]["acr"][0])
                        for b in expected)
        assert bool(table.loc[a, "pareto"]) == (not dominated)


def test_best_sigma_ties_go_to_the_smallest_sigma(tmp_path):
    def same(sigma):  # radius 0.3 at either σ: its pa_lower differs
        return [{"idx": i, "label": 1, "predict": 1, "radius": 0.3, "correct": 1, "time": 0.1,
                 "pa_lower": round(norm.cdf(0.3 / sigma), 6), "nfe": 0, "n": 100} for i in range(4)]

    run = write_run(tmp_path / "run", [{"label": "p", "name": "p", "params": {}}],
                    {("p", 1.0): same(1.0), ("p", 0.5): same(0.5)})
    table = paper_table(load_rows(run))
    assert table.loc[0, "acc@0_sigma"] == 0.5 and table.loc[0, "acr_sigma"] == 0.5
    assert table.loc[0, "acc@0.25"] == 1.0 and table.loc[0, "acc@0.5"] == 0.0


def test_write_report_writes_markdown_csv_and_booktabs_latex(tmp_path):
    run = standard_run(tmp_path / "run")
    table = write_report(run)
    expected = _expected_table(run)
    md = (run / "report.md").read_text()
    for label, exp in expected.items():
        acc, sigma, *_ = exp["acc"][0.5]
        assert f"{100 * acc:.1f} (σ={sigma:g})" in md
    pareto_labels = list(table.loc[table["pareto"], "purifier"])
    assert pareto_labels and all(f"{label} †" in md for label in pareto_labels)
    csv = pd.read_csv(run / "report.csv")
    assert list(csv["purifier"]) == ["identity", "ddpm", "slow(steps=10)"]
    assert csv.loc[csv["purifier"] == "ddpm", "acr"].item() == pytest.approx(expected["ddpm"]["acr"][0])
    tex = (run / "report.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{" in tex and "slow(steps=10)" in tex


def test_report_merges_quality_csv(tmp_path):
    run = standard_run(tmp_path / "run")
    pd.DataFrame({"purifier": ["identity", "ddpm", "slow(steps=10)"] * 2, "sigma": [0.25] * 3 + [0.5] * 3,
                  "images": 30, "copies": 8, "mse": [0.06, 0.01, 0.005, 0.25, 0.03, 0.02],
                  "ssim": [0.31, 0.72, 0.83, 0.12, 0.55, 0.61], "psnr": [12.2, 20.0, 23.0, 6.0, 15.2, 17.0],
                  "label_kept": [0.9, 0.95, 0.97, 0.5, 0.8, 0.85]}).to_csv(run / "quality.csv", index=False)
    table = write_report(run).set_index("purifier")
    assert table.loc["ddpm", "mse@σ=0.5"] == pytest.approx(0.03)
    assert table.loc["identity", "label_kept@σ=0.25"] == pytest.approx(0.9)
    assert table.loc["ddpm", "ssim@σ=0.5"] == pytest.approx(0.55)
    assert table.loc["slow(steps=10)", "psnr@σ=0.25"] == pytest.approx(23.0)
    md = (run / "report.md").read_text()
    assert "Purification quality" in md and "0.0300" in md and "0.550" in md and "15.20" in md
    assert "no purifier was trained or selected on" in md


def test_paper_table_of_no_rows_is_an_error():
    with pytest.raises(BenchError):
        paper_table(pd.DataFrame(columns=["idx", "purifier", "sigma"]))


# --- McNemar ----------------------------------------------------------------------------------------------

def _rows(label, successes, sigma=0.5, radius=0.4, start=0):
    return [{"idx": start + i, "label": 3, "predict": 3 if ok else -1, "radius": radius if ok else 0.0,
             "correct": int(ok), "time": 0.1, "pa_lower": round(norm.cdf(radius / sigma), 6) if ok else 0.3,
             "nfe": 0, "n": 100}
            for i, ok in enumerate(successes)]


def _two_purifier_run(tmp_path, a, b, **kw):
    specs = [{"label": "a", "name": "a", "params": {}}, {"label": "b", "name": "b", "params": {}}]
    return load_rows(write_run(tmp_path / "run", specs, {("a", 0.5): _rows("a", a), ("b", 0.5): _rows("b", b, **kw)}))


def test_mcnemar_exact_matches_the_binomial_cdf(tmp_path):
    rng = np.random.RandomState(3)
    a = rng.rand(60) < 0.4
    b = rng.rand(60) < 0.7
    rows = _two_purifier_run(tmp_path, a, b)
    b01 = int(np.sum(~a & b))
    b10 = int(np.sum(a & ~b))
    p = min(1.0, 2 * binom.cdf(min(b01, b10), b01 + b10, 0.5))
    res = mcnemar_exact(rows, "a", "b", sigma=0.5, radius=0.25)
    assert (res.b01, res.b10, res.n) == (b01, b10, 60)
    assert res.pvalue == pytest.approx(p, rel=1e-9)
    # At a radius above every certificate nobody succeeds: no discordant pair, p = 1.
    none = mcnemar_exact(rows, "a", "b", sigma=0.5, radius=0.5)
    assert (none.b01, none.b10, none.pvalue) == (0, 0, 1.0)


def test_mcnemar_pairs_only_the_shared_images(tmp_path):
    rows = _two_purifier_run(tmp_path, [True, True, False, False], [True, True, False, True], start=2)
    # a covers images 0-3, b covers 2-5: shared images 2 and 3, where a fails and b succeeds.
    res = mcnemar_exact(rows, "a", "b", sigma=0.5, radius=0.0)
    assert (res.n, res.b01, res.b10) == (2, 2, 0)
    assert res.pvalue == pytest.approx(2 * binom.cdf(0, 2, 0.5))


def test_mcnemar_rejects_unknown_label_and_sigma(tmp_path):
    rows = _two_purifier_run(tmp_path, [True], [False])
    with pytest.raises(UnknownName, match=r"available: a, b"):
        mcnemar_exact(rows, "a", "c", sigma=0.5, radius=0.0)
    with pytest.raises(InvalidArgument, match=r"available: 0\.5"):
        mcnemar_exact(rows, "a", "b", sigma=0.25, radius=0.0)
    assert math.isclose(mcnemar_exact(rows, "a", "b", sigma=0.5 + 1e-13, radius=0.0).sigma, 0.5)


# --- honest statistics -----------------------------------------------------------------------------------

def test_selection_interval_closed_forms():
    """k = 0 and k = n have closed-form Clopper–Pearson ends: upper 1 − (a/2)^(1/n), lower (a/2)^(1/n)."""
    from benchbench.results.report import selection_interval

    n, m = 20, 4
    a = 0.05 / m  # per-σ level after Bonferroni over m σs
    low, high = selection_interval([0, 0, 0, 0], n)
    assert low == 0.0 and high == pytest.approx(1 - (a / 2) ** (1 / n))
    low, high = selection_interval([0, n, 3, 5], n)
    assert low == pytest.approx((a / 2) ** (1 / n)) and high == 1.0
    # One σ: the plain 95% interval.
    assert selection_interval([7], 30) == pytest.approx(binomial_interval(7, 30))
    # Wider than the naive interval of the selected cell.
    naive = binomial_interval(12, 30)
    low, high = selection_interval([12, 10, 3], 30)
    assert low < naive[0] and high > naive[1]


def test_holm_matches_a_hand_computed_case():
    from benchbench.results.report import holm

    # p sorted: 0.01 (×3 = 0.03), 0.02 (×2 = 0.04), 0.04 (×1, but never below 0.04) — given unsorted.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # Monotone step-down: a later, smaller product is lifted to the running maximum; capped at 1.
    assert holm([0.5, 0.001, 0.3, 0.02]) == pytest.approx([0.6, 0.004, 0.6, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_false_certificate_bound_is_the_binomial_quantile_by_hand():
    from benchbench.results.report import false_certificate_bound

    def cdf(m, k, a):
        return sum(math.comb(k, j) * a**j * (1 - a) ** (k - j) for j in range(m + 1))

    for k, a, d in [(450, 0.001, 0.05), (100, 0.01, 0.05), (30, 0.001, 0.01), (1000, 0.02, 0.1)]:
        m = next(m for m in range(k + 1) if cdf(m, k, a) >= 1 - d)
        assert false_certificate_bound(k, a, d) == m
    assert false_certificate_bound(0, 0.001) == 0


def test_report_alpha_aware_and_compare_with_holm(tmp_path, capsys):
    from benchbench.cli import main

    run = standard_run(tmp_path / "run")
    assert main(["report", str(run), "--alpha-aware", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "≥" in out and "α-aware" in out and "1 − 0.05/|σs|" in out
    table = pd.read_csv(run / "report.csv")
    assert (table["acc@0_hp"] <= table["acc@0"] + 1e-12).all()
    assert main(["compare", str(run), "identity", "ddpm", "--pair", "ddpm", "slow(steps=10)", "--sigma", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("Holm-adjusted p") == 2 and "Holm over 2 pairs" in out
    assert main(["report", str(run), "--alpha-aware", "2"]) == 2


def _alpha_aware_by_hand(k, n, alpha, delta, cells):
    """(k − m)/n, at least 0, with m the smallest count whose Binomial(n, α) cdf reaches 1 − δ/cells."""
    cdf, m = 0.0, 0
    while True:
        cdf += math.comb(n, m) * alpha**m * (1 - alpha) ** (n - m)
        if cdf >= 1 - delta / cells:
            return max(0, k - m) / n
        m += 1


def test_alpha_aware_bound_holds_in_the_worst_case():
    """Every issued certificate wrong, each issued with the largest allowed probability α, 450 images per
    σ and 3 σs: the bound at the best σ may claim a correct certificate (a positive bound) in at most δ of
    the runs. The bound from Binomial(k, α) over the k certified claimed one in about 36% at one σ."""
    from benchbench.results.report import alpha_aware_lower

    rng = np.random.default_rng(0)
    n, alpha, delta, trials = 450, 0.001, 0.05, 4000
    issued = rng.binomial(n, alpha, size=(trials, 3))  # per run and σ: wrong certificates, all of them
    claims = 0
    for ks in issued:
        best = int(np.argmax(ks))  # the σ the report shows: the most certified
        claims += alpha_aware_lower(ks.tolist(), [n] * 3, alpha, delta)[best] > 0
    # 4000 runs: a true rate of 5% gives at most 6.1% with probability > 99.9%.
    assert claims / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_alpha_aware_column_counts_every_image_of_the_cell(tmp_path):
    def cell(certified, sigma):
        pa = 0.8
        return [{"idx": i, "label": 2, "predict": 2 if i < certified else -1,
                 "radius": round(sigma * norm.ppf(pa), 6) if i < certified else 0.0, "correct": int(i < certified),
                 "time": 0.1, "pa_lower": pa if i < certified else 0.2, "nfe": 0, "n": 100} for i in range(450)]

    run = write_run(tmp_path / "run", [{"label": "p", "name": "p", "params": {}}],
                    {("p", 0.25): cell(5, 0.25), ("p", 0.5): cell(1, 0.5)})
    table = write_report(run, alpha_aware=0.05)
    # α = 0.001 (the run's): at most 2 of 450 wrong with probability ≥ 1 − 0.05/2, so 5 issued → ≥ 3 correct.
    assert table.loc[0, "acc@0_hp"] == pytest.approx(_alpha_aware_by_hand(5, 450, 0.001, 0.05, 2)) == 3 / 450
    assert "≥0.7" in (run / "report.md").read_text()


def _certified_rows(count, certified, sigma, start=0):
    pa = 0.75
    return [{"idx": start + i, "label": 1, "predict": 1 if i < certified else -1,
             "radius": round(sigma * norm.ppf(pa), 6) if i < certified else 0.0, "correct": int(i < certified),
             "time": 0.1, "pa_lower": pa if i < certified else 0.3, "nfe": 0, "n": 100} for i in range(count)]


def test_partial_cells_are_each_over_their_own_images(tmp_path, capsys):
    from benchbench.cli import main

    # σ = 0.25 stopped after 10 images, all certified; σ = 0.5 has all 30, 3 certified.
    run = write_run(tmp_path / "run", [{"label": "p", "name": "p", "params": {}}],
                    {("p", 0.25): _certified_rows(10, 10, 0.25), ("p", 0.5): _certified_rows(30, 3, 0.5)})
    table = write_report(run)
    per_cell = 1 - 0.05 / 2  # Bonferroni over the two σs, each exact interval over its own images
    low = max(beta.ppf((1 - per_cell) / 2, 10, 1), beta.ppf((1 - per_cell) / 2, 3, 28))
    assert table.loc[0, "acc@0"] == 1.0 and table.loc[0, "acc@0_sigma"] == 0.25
    assert table.loc[0, "acc@0_low"] == pytest.approx(low) and table.loc[0, "acc@0_high"] == 1.0
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "100.0 (σ=0.25) [" in out and ", 100.0]" in out and "10–30/30" in out
    assert len(err.strip().splitlines()) == 1 and "partial run" in err


def test_planned_cells_without_rows_show_as_missing(tmp_path, capsys):
    from benchbench.cli import main

    specs = [{"label": "a", "name": "a", "params": {}}, {"label": "b", "name": "b", "params": {}}]
    run = write_run(tmp_path / "run", specs, {("a", 0.25): _certified_rows(12, 9, 0.25)})
    config = json.loads((run / "config.json").read_text())
    # Planned but never reached (Ctrl-C): a at σ = 0.5, b at both σs. Their files were never written.
    config["experiment"]["sigmas"] = [0.25, 0.5]
    config["files"] += [{"purifier": lab, "sigma": s, "file": f"certify_{lab}{s:g}.tsv"}
                        for lab, s in (("a", 0.5), ("b", 0.25), ("b", 0.5))]
    (run / "config.json").write_text(json.dumps(config))
    table = write_report(run).set_index("purifier")
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "images_min"] == 0 and table.loc["a", "missing"] == "0.5"
    assert table.loc["b", "images"] == 0 and math.isnan(table.loc["b", "acc@0"])
    # a's interval is corrected for both planned σs, not only the one with rows.
    assert (table.loc["a", "acc@0_low"], table.loc["a", "acc@0_high"]) == \
        pytest.approx(binomial_interval(9, 12, 1 - 0.05 / 2))
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1
    assert "a 0–12 of 12, no rows at σ=0.5" in err and "b no rows at all" in err
    assert "over 12 images" not in out and "| b " in out
