"""`bench import cohen|dds` and per-dataset presets."""

import json
import math

import pandas as pd
import pytest
from scipy.stats import norm

from benchbench.cli import main
from benchbench.run.presets import preset_values

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
# Five images as locuslab/smoothing's certify.py prints them: idx 0, 20, …; one abstention (-1), one wrong.
ROWS = [(0, 3, 3, 0.521, "0:00:01.500000"), (20, 8, 8, 0.75, "0:00:02.250000"), (40, 1, -1, 0.0, "0:00:01"),
        (60, 5, 2, 0.113, "0:00:03.000000"), (80, 0, 0, 1.22, "0:00:00.500000")]
CORRECT = [1, 1, 0, 0, 1]


def write(path, running_total, indices=None):
    """The rows above (the first len(indices), renumbered to ``indices`` when given) as certify.py writes them."""
    total, lines = 0, []
    for k, ((idx, label, pred, radius, time), ok) in enumerate(zip(ROWS, CORRECT)):
        if indices is not None:
            if k == len(indices):
                break
            idx = indices[k]
        total += ok
        lines.append(f"{idx}\t{label}\t{pred}\t{radius:.3}\t{total if running_total else ok}\t{time}\n")
    path.write_text(HEADER + "".join(lines))
    return path


@pytest.mark.parametrize("fmt", ["cohen", "dds"])
def test_import_reads_published_rows(tmp_path, fmt, capsys):
    src = write(tmp_path / "certify.tsv", running_total=(fmt == "dds"))
    out = tmp_path / "run"
    assert main(["import", fmt, str(src), "--sigma", "0.5", "--out", str(out), "--n", "100000",
                 "--dataset", "cifar10"]) == 0
    config = json.loads((out / "config.json").read_text())
    entry = config["files"][0]
    assert entry["purifier"] == fmt and entry["imported"]["format"] == fmt
    rows = pd.read_csv(out / entry["file"], sep="\t")
    assert rows["correct"].tolist() == CORRECT
    assert rows["time"].tolist() == pytest.approx([1.5, 2.25, 1.0, 3.0, 0.5])
    assert rows["pa_lower"].iloc[0] == pytest.approx(norm.cdf(0.521 / 0.5), rel=1e-5)
    assert math.isnan(rows["pa_lower"].iloc[2])  # abstention
    assert (rows["n"] == 100000).all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["acc@0.5"].iloc[0] == pytest.approx(3 / 5)  # radii 0.521, 0.75, 1.22
    assert summary["acr"].iloc[0] == pytest.approx((0.521 + 0.75 + 1.22) / 5)


def test_import_adds_published_rows_beside_a_run(tmp_path, tiny_ddpm):
    run = tmp_path / "run"
    assert main(["run", "--purifiers", "identity", "--num-images", "3", "--n0", "4", "--n", "16", "--sigmas", "0.5",
                 "--out", str(run)]) == 0
    experiment = json.loads((run / "config.json").read_text())["experiment"]
    src = write(tmp_path / "dds.tsv", running_total=True, indices=experiment["image_indices"])
    assert main(["import", "dds", str(src), "--sigma", "0.5", "--out", str(run), "--label", "DDS (published)"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["experiment"] == experiment  # the run still resumes
    assert [f["purifier"] for f in config["files"]] == ["identity", "DDS (published)"]
    assert main(["report", str(run)]) == 0
    assert "DDS (published)" in (run / "report.md").read_text()
    assert main(["plot", "radius", str(run)]) == 0
    with pytest.warns(UserWarning, match=r"no nfe recorded for DDS \(published\)"):
        from benchbench.results.plots import pareto_points

        points = pareto_points([run], cost="nfe")
    assert set(points["purifier"]) == {"identity"}
    # the same label and σ again: refused, nothing changed
    before = (run / "config.json").read_text()
    assert main(["import", "dds", str(src), "--sigma", "0.5", "--out", str(run), "--label", "DDS (published)"]) == 2
    assert (run / "config.json").read_text() == before


def test_import_refuses_a_dds_file_read_as_cohen(tmp_path, capsys):
    src = write(tmp_path / "dds.tsv", running_total=True)
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "running total" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n")
    assert main(["import", "dds", str(tmp_path / "bad.tsv"), "--sigma", "0.5", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_presets_resolve_per_dataset():
    paper = preset_values("paper", "cifar10")
    assert (paper["n0"], paper["n"], paper["alpha"], paper["num_images"]) == (100, 10_000, 0.001, 500)
    assert paper["sigmas"] == (0.25, 0.5, 1.0) and paper["dataset"] == "cifar10"
    assert preset_values("paper", "imagenet64")["sigmas"] == (0.05, 0.15, 0.25)
    assert preset_values("cohen", "cifar10")["n"] == 100_000
    assert preset_values("paper")["dataset"] == "digits"


def test_paper_preset_takes_every_20th_cifar10_and_every_100th_imagenet64_image():
    from benchbench.run.runner import RunConfig
    from benchbench.registry import parse_purifier_list

    for dataset, size, stride in (("cifar10", 10_000, 20), ("imagenet64", 50_000, 100)):
        config = RunConfig(purifiers=parse_purifier_list("identity"), **preset_values("paper", dataset))
        indices = config.image_indices(size)
        assert len(indices) == 500 and indices[:3] == [0, stride, 2 * stride]
