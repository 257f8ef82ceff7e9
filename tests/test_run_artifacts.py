"""`bench run` ends by writing the report, quality.csv and the three figures into the run directory."""

import pandas as pd

from benchbench.cli import main


def test_bench_run_writes_report_quality_and_figures(tmp_path, tiny_ddpm, capsys):
    out = tmp_path / "run"
    assert main(["run", "--purifiers", f"identity,ddpm:model={tiny_ddpm}", "--num-images", "2", "--skip", "100",
                 "--sigmas", "0.5", "--n0", "4", "--n", "16", "--alpha", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| purifier" in printed and "r=0.5" in printed and "Purification quality" in printed
    for name in ("report.md", "report.csv", "report.tex", "quality.csv"):
        assert (out / name).stat().st_size > 0, name
    for name in ("pareto.png", "radius.png", "grid.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    quality = pd.read_csv(out / "quality.csv")
    assert list(quality["purifier"]) == ["identity", f"ddpm(model={tiny_ddpm})"]
    assert (quality["images"] == 2).all() and (quality["copies"] == 8).all()
    report = pd.read_csv(out / "report.csv")
    assert report["pareto"].any() and "mse@σ=0.5" in report.columns
