"""Figures and the reporting commands: every plot writes a non-empty PNG and SVG, the Pareto points are the
rows' numbers, several devices stay apart, and user errors are one stderr line with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchbench.smoothing.certify import noisy_batches
from benchbench.cli import main
from benchbench.data.dataset import get_dataset
from benchbench.results.plots import pareto_points, purification_grid
from benchbench.registry import PurifierSpec
from benchbench.smoothing.noise import noise_generator
from synthetic_run import random_rows, read_tsvs, standard_run, write_run

ROOT = Path(__file__).parent.parent


def assert_figures(stem: Path, formats=("png", "svg")):
    for fmt in formats:
        path = stem.with_suffix("." + fmt)
        assert path.is_file() and path.stat().st_size > 1000, path
    if "png" in formats:
        assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if "svg" in formats:
        assert "<svg" in stem.with_suffix(".svg").read_text()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def run(tmp_path):
    return standard_run(tmp_path / "run")


# --- Pareto -----------------------------------------------------------------------------------------------

def test_plot_pareto_command_writes_png_and_svg(run, capsys):
    assert main(["plot", "pareto", str(run)]) == 0
    assert_figures(run / "pareto")
    assert "pareto.png" in capsys.readouterr().out


def test_plot_pareto_nfe_and_accuracy(run, tmp_path):
    out = tmp_path / "figs" / "nfe.png"
    assert main(["plot", "pareto", str(run), "--cost", "nfe", "--robustness", "acc", "--radius", "0.25",
                 "--out", str(out)]) == 0
    assert_figures(out)


def test_pareto_points_are_the_rows_numbers(run):
    cells = read_tsvs(run)
    acr = pareto_points(run, cost="seconds", robustness="acr")
    acc = pareto_points(run, cost="nfe", robustness="acc", radius=0.5)
    for (label, sigma), rows in cells.items():
        p = acr[(acr["purifier"] == label) & (acr["sigma"] == sigma)].iloc[0]
        assert p["cost"] == pytest.approx(np.mean([r["time"] for r in rows]))
        assert p["robustness"] == pytest.approx(np.mean([r["radius"] * r["correct"] for r in rows]))
        q = acc[(acc["purifier"] == label) & (acc["sigma"] == sigma)].iloc[0]
        assert q["cost"] == pytest.approx(np.mean([r["nfe"] for r in rows]))
        assert q["robustness"] == pytest.approx(100 * np.mean([r["correct"] == 1 and r["radius"] >= 0.5 for r in rows]))
    for label in ("identity", "ddpm", "slow(steps=10)"):
        mine = acr[acr["purifier"] == label]
        best = mine[mine["kind"] == "best"].iloc[0]
        assert best["robustness"] == mine.loc[mine["kind"] == "sigma", "robustness"].max()
        assert not best["pareto"]
    # The front over the per-σ points, by brute force.
    pts = acr[acr["kind"] == "sigma"]
    for i, p in pts.iterrows():
        dominated = any(q["cost"] <= p["cost"] and q["robustness"] >= p["robustness"]
                        and (q["cost"] < p["cost"] or q["robustness"] > p["robustness"]) for _, q in pts.iterrows())
        assert p["pareto"] == (not dominated)


def test_runs_on_different_devices_are_kept_apart(tmp_path, capsys):
    a = standard_run(tmp_path / "cpu-run", seed=0, device="cpu")
    b = standard_run(tmp_path / "gpu-run", seed=1, device="NVIDIA H100 80GB HBM3")
    configs = set(pareto_points([a, b])["config"])
    assert {"identity [cpu]", "identity [H100 80GB]", "ddpm [cpu]"} <= configs
    assert len(configs) == 6
    out = tmp_path / "both.png"
    assert main(["plot", "pareto", str(a), str(b), "--out", str(out)]) == 0
    assert_figures(out)


def test_timings_from_a_benchmark_json(run, tmp_path, capsys):
    bench = {"benchmarks": [
        {"name": "test_purifier_latency[identity]", "params": {"purifier": "identity"},
         "extra_info": {"purifier": "identity", "batch_size": 64, "device": "cpu"}, "stats": {"mean": 2e-6}},
        {"name": "test_purifier_latency[ddpm]", "params": {"purifier": "ddpm"},
         "extra_info": {"purifier": "ddpm", "batch_size": 64, "device": "cpu"}, "stats": {"mean": 0.02}},
    ]}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(bench))
    with pytest.warns(UserWarning, match=r"slow\(steps=10\)"):
        points = pareto_points(run, timings=path)
    assert set(points["purifier"]) == {"identity", "ddpm"}
    assert (points.loc[points["purifier"] == "ddpm", "cost"] == 0.02).all()
    out = tmp_path / "timed.png"
    assert main(["plot", "pareto", str(run), "--timings", str(path), "--out", str(out)]) == 0
    assert_figures(out)
    assert "no benchmark timing for slow(steps=10)" in one_error_line(capsys)


def test_benchmark_suite_labels_match_plot_timings(run, tmp_path):
    # The real suite, identity only and one round: its JSON must be what --timings reads.
    out = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks",
                           "-k", "identity", "--benchmark-only", "--benchmark-min-rounds=1",
                           "--benchmark-max-time=0.001", "--benchmark-warmup=off", f"--benchmark-json={out}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bm = json.loads(out.read_text())["benchmarks"]
    assert [b["extra_info"]["purifier"] for b in bm] == ["identity"]
    assert bm[0]["group"].startswith("purifier latency")
    with pytest.warns(UserWarning):  # ddpm and slow have no timing in this file
        points = pareto_points(run, timings=out)
    assert set(points["purifier"]) == {"identity"}


# --- radius and grid --------------------------------------------------------------------------------------

def test_plot_radius_command(run):
    assert main(["plot", "radius", str(run)]) == 0
    assert_figures(run / "radius")


def test_plot_grid_command(tmp_path, tiny_ddpm):
    rng = np.random.RandomState(0)
    specs = [{"label": "identity", "name": "identity", "params": {}},
             {"label": f"ddpm(model={tiny_ddpm})", "name": "ddpm", "params": {"model": str(tiny_ddpm)}}]
    cells = {(s["label"], sigma): random_rows(rng, sigma, [0, 50, 100], 0.1, 1.0, 0.5)
             for s in specs for sigma in (0.25, 0.5)}
    run = write_run(tmp_path / "run", specs, cells)
    assert main(["plot", "grid", str(run), "--images", "2", "--device", "cpu"]) == 0
    assert_figures(run / "grid")


def test_grid_shows_the_runners_first_noisy_copy():
    sigmas, indices, seed = [0.25, 0.5], [0, 15], 3
    grid = purification_grid([PurifierSpec("identity")], "digits", sigmas, indices, seed, "cpu", n0=32)
    test = get_dataset("digits", "test")
    for s in sigmas:
        for k, idx in enumerate(indices):
            first = next(noisy_batches(test.images[idx], 32, sigma=s, batch_size=32,
                                       generator=noise_generator(seed, idx, s)))[0]
            assert torch.equal(grid["noisy"][s][k], first)
            assert torch.equal(grid["purified"]["identity"][s][k], first)
        assert torch.equal(grid["clean"], test.images[indices])


# --- report, compare and errors ---------------------------------------------------------------------------

def test_report_command_prints_and_writes(run, capsys):
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "r=0.5" in printed and "†" in printed
    for name in ("report.md", "report.csv", "report.tex"):
        assert (run / name).stat().st_size > 0


def test_compare_command(run, capsys):
    assert main(["compare", str(run), "identity", "ddpm", "--sigma", "0.5", "--radius", "0.25"]) == 0
    assert "McNemar p =" in capsys.readouterr().out


def test_compare_unknown_label_is_one_line_and_exit_2(run, capsys):
    assert main(["compare", str(run), "identity", "dpm", "--sigma", "0.5", "--radius", "0.25"]) == 2
    line = one_error_line(capsys)
    assert "'dpm'" in line and "did you mean 'ddpm'" in line and "identity, ddpm, slow(steps=10)" in line


def test_compare_unknown_sigma_is_one_line_and_exit_2(run, capsys):
    assert main(["compare", str(run), "identity", "ddpm", "--sigma", "0.3"]) == 2
    assert "available: 0.25, 0.5, 1" in one_error_line(capsys)


@pytest.mark.parametrize("argv", [["report"], ["plot", "radius"], ["plot", "pareto"], ["plot", "grid"],
                                  ["compare", "--sigma", "0.5", "a", "b"], ["quality"]])
def test_a_directory_without_config_is_one_line_and_exit_2(tmp_path, capsys, argv):
    cmd = [*argv[:2], str(tmp_path), *argv[2:]] if argv[0] == "plot" else [argv[0], str(tmp_path), *argv[1:]]
    assert main(cmd) == 2
    assert "no config.json" in one_error_line(capsys)


def test_plot_pareto_without_run_dirs_and_no_results_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "pareto"]) == 2
    assert "no run found" in one_error_line(capsys)
