"""A third-party purifier installed with pip is discovered through its entry point, without editing
benchbench, and runs through `bench run`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchbench.results.rundir import tsv_name
from conftest import BENCH

PLUGIN = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(PLUGIN)], check=True)
    assert list(site.glob("bench_blur_plugin-*.dist-info/entry_points.txt"))
    return site


def _env(site: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_installed_plugin_is_listed(plugin_site):
    out = subprocess.run([*BENCH, "list", "purifiers"], env=_env(plugin_site), capture_output=True, text=True,
                         check=True).stdout
    assert "blur(passes: int = 1)" in out
    assert "3×3 box blur" in out
    without = subprocess.run([*BENCH, "list", "purifiers"], capture_output=True, text=True, check=True).stdout
    assert "blur" not in without


def test_installed_plugin_runs_through_bench_run(plugin_site, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([*BENCH, "run", "--purifiers", "blur:passes=2,identity", "--num-images", "2",
                           "--sigmas", "0.25", "--n0", "4", "--n", "16", "--out", str(out)],
                          env=_env(plugin_site), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / tsv_name("blur(passes=2)", 0.25)).is_file()
    assert "blur(passes=2)" in (out / "summary.md").read_text()
