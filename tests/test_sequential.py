"""Sequential certification at a radius grid: validity of the certificate under the stopping rule, pairing
with the fixed protocol's noise, equality with fixed rows away from the thresholds, and the run directory.

The synthetic pipeline is a threshold "classifier" on a scalar input: f(x + δ) = 0 when x + δ ≤ t, else 1,
so with x = 0, P(f = 0) = Φ(t/σ) =: p_A exactly — a Bernoulli classifier whose p_A is known per image,
driven by the run's own noise.
"""

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom, binomtest, norm

from benchbench.cli import main
from benchbench.smoothing.certify import ABSTAIN, NoisyCopies, SequentialRule, certify, certify_sequential, \
    doubling_looks, noisy_batches

SIGMA = 0.5
GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def threshold_classifier(p_a: float):
    """f(x + δ) for scalar x = 0: class 0 with probability p_A under δ ~ N(0, σ²)."""
    t = SIGMA * norm.ppf(p_a)
    return lambda batch: (batch.reshape(len(batch), -1)[:, 0] > t).long()


class CachedRule(SequentialRule):
    """The rule under test with its (pure) decision memoised: thousands of images share few (n_A, m)."""

    @functools.lru_cache(maxsize=None)
    def decided(self, count_top, m, *, sigma, alpha):
        return super().decided(count_top, m, sigma=sigma, alpha=alpha)


class NaiveRule(CachedRule):
    """A rule that ignores the multiple looks: every look's bound at the full α."""

    def look_alpha(self, alpha):
        return alpha


def wrong_certificates(rule, p_values, alpha, n0=20):
    """How many images get a certificate their p_A does not support: a radius above the true one
    σ·Φ⁻¹(p_A) for class 0, or any certificate for class 1 (its probability is below ½)."""
    wrong = 0
    for i, p_a in enumerate(p_values):
        cert = certify_sequential(threshold_classifier(p_a), torch.zeros(1), sigma=SIGMA, n0=n0, alpha=alpha,
                                  rule=rule, batch_size=1000, num_classes=2,
                                  generator=torch.Generator().manual_seed(1000 + i))
        true_radius = SIGMA * norm.ppf(p_a)
        wrong += (cert.prediction == 0 and cert.radius > true_radius) or cert.prediction == 1
    return wrong


def test_sequential_certificates_hold_with_probability_alpha_and_a_naive_rule_fails_the_same_test():
    # p_A just below a grid threshold Φ(r/σ) (r = 0.25, 0.5, 0.75): the rule keeps looking until it certifies
    # r (wrongly) or runs out, which is where stopping on a look's bound can overshoot. 20 looks make a rule
    # that ignores them clearly worse than α (about 0.14 in a simulation of this set-up).
    alpha = 0.05
    p_values = [p for p in (0.691, 0.84, 0.933) for _ in range(200)]
    looks = tuple(range(50, 1001, 50))
    bound = binom.ppf(0.999, len(p_values), alpha)  # at most this many wrong, with probability ≥ 0.999
    sequential = wrong_certificates(CachedRule(GRID, looks), p_values, alpha)
    naive = wrong_certificates(NaiveRule(GRID, looks), p_values, alpha)
    print(f"wrong certificates of {len(p_values)}: sequential {sequential}, naive {naive}, bound {bound:g}")
    assert sequential <= bound, f"{sequential} wrong certificates of {len(p_values)}, bound {bound:g}"
    assert naive > bound, f"the test has no power: the naive rule gave only {naive} wrong (bound {bound:g})"


def test_the_first_m_estimation_copies_are_the_fixed_protocols():
    x = torch.zeros(2, 2)
    seen = {"fixed": [], "sequential": []}

    def recorder(mode):
        def classify(batch):
            seen[mode].append(batch.clone())
            return torch.zeros(len(batch), dtype=torch.long)  # always class 0: every look decides nothing early
        return classify

    n0, n = 30, 1000
    rule = SequentialRule(GRID, (70, 200, 1000))
    stop = SequentialRule((0.0,), (70, 200, 1000))  # r = 0 is certified at the first look: a 70-copy prefix
    certify(recorder("fixed"), x, sigma=SIGMA, n0=n0, n=n, alpha=0.01, batch_size=64, num_classes=2,
            generator=torch.Generator().manual_seed(5))
    fixed = torch.cat(seen["fixed"])
    for r, used in ((rule, 1000), (stop, 70)):
        seen["sequential"] = []
        cert = certify_sequential(recorder("sequential"), x, sigma=SIGMA, n0=n0, alpha=0.01, rule=r, batch_size=50,
                                  num_classes=2, generator=torch.Generator().manual_seed(5))
        got = torch.cat(seen["sequential"])
        assert cert.n == used and len(got) == n0 + used
        assert torch.equal(got, fixed[: n0 + cert.n])
    # A stream taken in uneven pieces gives the same copies as whole batches.
    pieces = NoisyCopies(x, 300, sigma=SIGMA, generator=torch.Generator().manual_seed(1))
    uneven = torch.cat([pieces.take(k) for k in (1, 63, 64, 65, 7, 100)])
    whole = torch.cat(list(noisy_batches(x, 300, sigma=SIGMA, batch_size=300,
                                         generator=torch.Generator().manual_seed(1))))
    assert torch.equal(uneven, whole)


def _certified(cert, r):
    return cert.prediction != ABSTAIN and cert.radius >= r


def test_sequential_equals_fixed_where_fixed_is_far_from_every_threshold():
    alpha, n = 0.001, 2000
    rule = SequentialRule.for_protocol(n, GRID)
    k = len(rule.looks)
    far = compared = 0
    saved = 0
    for i, p_a in enumerate(np.linspace(0.2, 0.9995, 80)):
        classify = threshold_classifier(float(p_a))
        kwargs = dict(sigma=SIGMA, n0=100, alpha=alpha, batch_size=500, num_classes=2)
        fixed = certify(classify, torch.zeros(1), n=n, generator=torch.Generator().manual_seed(i), **kwargs)
        seq = certify_sequential(classify, torch.zeros(1), rule=rule, generator=torch.Generator().manual_seed(i),
                                 **kwargs)
        # Far: no threshold Φ(r/σ) lies inside fixed's exact interval at level α/K per side (scipy's
        # Clopper–Pearson, independent of the code under test), so both bounds fall on one side of each.
        c = int(np.argmax(fixed.counts_selection))
        ci = binomtest(int(fixed.counts_estimation[c]), n).proportion_ci(1 - 2 * alpha / k, method="exact")
        thresholds = [norm.cdf(r / SIGMA) for r in GRID]
        compared += 1
        saved += seq.n < n
        if any(ci.low <= t <= ci.high for t in thresholds):
            continue
        far += 1
        assert seq.prediction == fixed.prediction, p_a
        assert [_certified(seq, r) for r in GRID] == [_certified(fixed, r) for r in GRID], p_a
    assert far >= compared // 2  # the comparison is not vacuous
    assert saved >= compared // 2  # and the sequential rule did stop early on many of them


def test_doubling_looks_and_the_rule_decisions():
    assert doubling_looks(10_000) == (100, 200, 400, 800, 1600, 3200, 6400, 10_000)
    assert doubling_looks(100) == (100,) and doubling_looks(250) == (100, 200, 250)
    rule = SequentialRule.for_protocol(10_000, GRID)
    # Every sample on c_A after 400 at σ = 0.5: the bound at α/8 is 0.0001/8^(1/400) ≈ 0.9978, above Φ(1/0.5).
    assert rule.decided(400, 400, sigma=0.5, alpha=0.001)
    assert not rule.decided(200, 200, sigma=0.5, alpha=0.001)  # 0.9561 < Φ(2): r = 1 still open
    # p̂ = 0.5 after 100: r = 0 is neither certified nor refuted.
    assert not rule.decided(50, 100, sigma=0.5, alpha=0.001)
    assert rule.decided(5, 100, sigma=0.5, alpha=0.001)  # clearly below ½: every radius refuted


def tiny(out, *extra, n="1000"):
    return main(["run", "--purifiers", "identity", "--num-images", "3", "--skip", "60", "--sigmas", "0.5",
                 "--n0", "20", "--n", n, "--alpha", "0.01", "--batch-size", "300", "--no-report",
                 "--out", str(out), *extra])


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "run"
    assert tiny(out, "--certify", "sequential", "--radii", "0,0.25,0.5") == 0
    return out


def test_a_sequential_run_records_its_rule_and_its_rows_are_certify_sequentials(sequential_run):
    from benchbench.models.classifiers import load_classifier
    from benchbench.data.dataset import get_dataset
    from benchbench.smoothing.noise import noise_generator

    out = sequential_run
    exp = json.loads((out / "config.json").read_text())["experiment"]
    assert exp["certification"]["mode"] == "sequential"
    assert exp["certification"]["radii"] == [0.0, 0.25, 0.5]
    assert exp["certification"]["looks"] == [100, 200, 400, 800, 1000]
    rows = pd.concat([pd.read_csv(f, sep="\t") for f in sorted(out.glob("certify_*.tsv"))])
    assert len(rows) == 3 and set(rows["n"]) <= {100, 200, 400, 800, 1000} and (rows["n"] < 1000).any()
    assert (rows["correct"] == ((rows["predict"] == rows["label"]) & (rows["predict"] >= 0))).all()

    # Each row is what certify_sequential gives for that image on its own (the runner packs images together).
    test = get_dataset("digits", "test")
    classifier = load_classifier("digits", torch.device("cpu"), "digits")
    rule = SequentialRule((0.0, 0.25, 0.5), (100, 200, 400, 800, 1000))
    for row in rows.itertuples():
        with torch.inference_mode():
            cert = certify_sequential(lambda b: classifier(b).argmax(1), test.images[row.idx], sigma=row.sigma,
                                      n0=20, alpha=0.01, rule=rule, batch_size=1000, num_classes=10,
                                      generator=noise_generator(0, row.idx, row.sigma))
        assert (row.predict, row.n) == (cert.prediction, cert.n)
        assert row.pa_lower == pytest.approx(cert.pa_lower, rel=1e-5)

    note = (out / "summary.md").read_text()
    assert "Sequential certification" in note and "ACR is capped by the grid" in note
    summary = pd.read_csv(out / "summary.csv")
    assert [c for c in summary.columns if c.startswith("acc@")] == ["acc@0", "acc@0.25", "acc@0.5"]
    assert summary["n_mean"].tolist() == [rows["n"].mean()]


def test_a_run_never_mixes_modes_or_grids(sequential_run, capsys):
    out = sequential_run
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    capsys.readouterr()
    assert tiny(out) == 2
    assert tiny(out, "--certify", "sequential") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("certification" in line for line in err)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # The same command resumes: nothing left to do, no row rewritten.
    assert tiny(out, "--certify", "sequential", "--radii", "0,0.25,0.5") == 0
    assert {f.name: f.read_bytes() for f in out.glob("certify_*.tsv")} == \
        {k: v for k, v in before.items() if k.startswith("certify_")}


def test_report_and_figures_say_sequential_and_fixed_ones_do_not(sequential_run, tmp_path):
    from benchbench.results.plots import certification_title
    from benchbench.results.report import write_report

    table = write_report(sequential_run)
    text = (sequential_run / "report.md").read_text()
    assert "Sequential certification" in text and "capped by the grid" in text
    assert "r=0.5" in text and "r=0.75" not in text  # the run's grid, not the default radii
    assert "capped by the grid" in (sequential_run / "report.tex").read_text()
    assert "sequential" in certification_title(sequential_run)
    assert [c for c in table.columns if c.startswith("acc@") and c[4:].replace(".", "").isdigit()] == \
        ["acc@0", "acc@0.25", "acc@0.5"]
    fixed = tmp_path / "fixed"
    assert tiny(fixed, n="50") == 0
    write_report(fixed)
    assert "equential" not in (fixed / "report.md").read_text() and certification_title(fixed) is None
    assert "equential" not in (fixed / "summary.md").read_text()
    assert "certification" not in json.loads((fixed / "config.json").read_text())["experiment"]


@pytest.mark.parametrize("extra,match", [
    (["--radii", "0,0.5"], "--radii is the grid of --certify sequential"),
    (["--certify", "sequential", "--radii", "0,-0.5"], "radii must be finite numbers >= 0"),
    (["--certify", "sequential", "--radii", "0.5,0.5"], "listed twice"),
    (["--certify", "sequential", "--radii", "a"], "radius must be a number"),
])
def test_bad_certify_arguments_are_one_line_and_write_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    assert tiny(out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not out.exists()
