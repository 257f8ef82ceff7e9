"""What `bench run` leaves next to its rows once they are complete: quality, report and figures."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

from benchbench.errors import CheckpointError
from benchbench.results.quality import DEFAULT_COPIES, Distance, write_quality
from benchbench.results.report import format_markdown, write_report
from benchbench.results.rundir import read_config


@dataclass
class Artifacts:
    """The report table as Markdown and every file written."""

    markdown: str
    files: list[Path] = field(default_factory=list)


def write_run_artifacts(run_dir: Path | str, *, device: str = "cpu", grid_images: int = 4,
                        copies: int = DEFAULT_COPIES, distance: Distance | str | None = "lpips",
                        skip: Collection[str] = ()) -> Artifacts:
    """Write ``quality.csv``, ``report.{md,csv,tex}`` (quality merged in) and ``pareto.png``,
    ``radius.png``, ``grid.png`` into a run directory. Figures are PNG only here; the ``bench plot``
    commands also write SVG. Purifier labels in ``skip`` (those that failed) are left out of quality and
    the image grid; their rows, if any, stay in the report."""
    from benchbench.results.plots import grid_from_run, plot_grid, plot_pareto, plot_radius

    run_dir = Path(run_dir)
    exp = read_config(run_dir)["experiment"]
    only = [p["label"] for p in exp["purifiers"] if p["label"] not in skip]
    copies = min(copies, exp["n0"] + exp["n"])
    try:
        write_quality(run_dir, distance=distance, copies=copies, device=device, only=only)
    except CheckpointError as exc:  # e.g. LPIPS vgg weights missing: say so, and measure the rest
        print(f"bench: warning: quality without a perceptual distance: {exc}", file=sys.stderr)
        write_quality(run_dir, distance=None, copies=copies, device=device, only=only)
    table = write_report(run_dir)
    files = [run_dir / name for name in ("quality.csv", "report.md", "report.csv", "report.tex")]
    files += plot_pareto(run_dir, run_dir / "pareto.png", formats=("png",))
    files += plot_radius(run_dir, run_dir / "radius.png", formats=("png",))
    files += plot_grid(grid_from_run(run_dir, grid_images, device, only=only), run_dir / "grid.png", formats=("png",))
    return Artifacts(format_markdown(table), files)
