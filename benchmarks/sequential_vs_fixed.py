"""Sequential against fixed certification, from two run directories of one protocol.

    python benchmarks/sequential_vs_fixed.py FIXED_RUN_DIR SEQUENTIAL_RUN_DIR

Compares only the (purifier, σ, image) units both directories hold (so part-done runs compare on the
images both finished): per purifier and σ, the images, noisy samples drawn (n0 + n per image) and
certification seconds of each mode with their ratio, then certified accuracy at each of the sequential run's
grid radii for both, each with its exact 95% Clopper–Pearson interval, and whether the sequential value lies
inside the fixed protocol's interval. Prints Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchbench.results.report import binomial_interval
from benchbench.results.rundir import certification, load_rows, read_config

KEY = ["purifier", "sigma", "idx"]


def compare(fixed_dir: Path, sequential_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cost table, accuracy table) over the units both runs hold."""
    fixed_exp, seq_exp = read_config(fixed_dir)["experiment"], read_config(sequential_dir)["experiment"]
    rule = certification(seq_exp)
    if certification(fixed_exp) is not None or rule is None:
        raise SystemExit("give a fixed run directory, then a sequential one")
    same = {k: fixed_exp[k] == seq_exp[k] for k in ("n0", "n", "alpha", "seed", "image_indices", "sigmas")}
    if not all(same.values()):
        raise SystemExit(f"the two runs differ in {[k for k, v in same.items() if not v]}")
    fixed = load_rows(fixed_dir).set_index(KEY)
    seq = load_rows(sequential_dir).set_index(KEY)
    both = fixed.index.intersection(seq.index)
    fixed, seq = fixed.loc[both].reset_index(), seq.loc[both].reset_index()
    n0 = fixed_exp["n0"]
    cost, acc = [], []
    for (label, sigma), f in fixed.groupby(["purifier", "sigma"], sort=False):
        s = seq[(seq["purifier"] == label) & (seq["sigma"] == sigma)]
        f_samples, s_samples = int((n0 + f["n"]).sum()), int((n0 + s["n"]).sum())
        cost.append({"purifier": label, "σ": sigma, "images": len(f), "samples fixed": f_samples,
                     "samples sequential": s_samples, "samples ratio": f_samples / s_samples,
                     "seconds fixed": f["time"].sum(), "seconds sequential": s["time"].sum(),
                     "seconds ratio": f["time"].sum() / s["time"].sum()})
        for r in rule["radii"]:
            rec = {"purifier": label, "σ": sigma, "r": r}
            for name, rows in (("fixed", f), ("sequential", s)):
                k = int(((rows["correct"] == 1) & (rows["radius"] >= r)).sum())
                low, high = binomial_interval(k, len(rows))
                rec[name] = f"{100 * k / len(rows):.1f} [{100 * low:.1f}, {100 * high:.1f}]"
                rec[f"_{name}"] = (k / len(rows), low, high)
            rec["sequential inside fixed's 95% interval"] = \
                "yes" if rec["_fixed"][1] <= rec["_sequential"][0] <= rec["_fixed"][2] else "no"
            acc.append(rec)
    cost_df = pd.DataFrame(cost)
    total = {"purifier": "all", "σ": float("nan"), "images": int(cost_df["images"].sum()),
             **{c: cost_df[c].sum() for c in ("samples fixed", "samples sequential", "seconds fixed",
                                               "seconds sequential")}}
    total["samples ratio"] = total["samples fixed"] / total["samples sequential"]
    total["seconds ratio"] = total["seconds fixed"] / total["seconds sequential"]
    cost_df = pd.concat([cost_df, pd.DataFrame([total])], ignore_index=True)
    acc_df = pd.DataFrame(acc).drop(columns=["_fixed", "_sequential"])
    return cost_df, acc_df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path)
    parser.add_argument("sequential", type=Path)
    args = parser.parse_args()
    cost, acc = compare(args.fixed, args.sequential)
    print(cost.to_markdown(index=False, floatfmt=".4g"))
    print()
    print(acc.to_markdown(index=False))


if __name__ == "__main__":
    main()
