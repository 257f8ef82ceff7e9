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


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _synthetic_run(tmp_path):
    """A 3-image run of one purifier at σ = 0.5 (images 0, 20, 40), written by hand."""
    from synthetic_run import write_run

    rows = [{"idx": i, "label": 3, "predict": -1, "radius": 0.0, "correct": 0, "time": 0.1, "pa_lower": 0.3,
             "nfe": 0, "n": 100} for i in (0, 20, 40)]
    return write_run(tmp_path / "run", [{"label": "identity", "name": "identity", "params": {}}],
                     {("identity", 0.5): rows})


BAD_ROWS = {"idx 0.5": "0.5\t3\t3\t0.521\t1\t1.0", "idx -4": "-4\t3\t3\t0.521\t1\t1.0",
            "radius 1e6": "0\t3\t3\t1e6\t1\t1.0", "radius nan": "0\t3\t3\tnan\t1\t1.0",
            "radius inf": "0\t3\t3\tinf\t1\t1.0", "radius -0.1": "0\t3\t3\t-0.1\t1\t1.0",
            "abstention radius": "0\t3\t-1\t0.4\t0\t1.0", "label -2": "0\t-2\t-1\t0\t0\t1.0",
            "time -1": "0\t3\t3\t0.521\t1\t-1", "time nan": "0\t3\t3\t0.521\t1\tnan"}


@pytest.mark.parametrize("into", ["new", "existing"])
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_import_refuses_a_bad_row_before_writing(tmp_path, capsys, case, into):
    src = tmp_path / "bad.tsv"
    src.write_text(HEADER + "20\t8\t8\t0.75\t1\t2.0\n" + BAD_ROWS[case] + "\n")
    out = _synthetic_run(tmp_path) if into == "existing" else tmp_path / "new"
    before = _tree(tmp_path)
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 3" in err[0]
    assert _tree(tmp_path) == before


def test_import_radius_limit_follows_n_and_alpha(tmp_path, capsys):
    # n = 100 at α = 0.001 certify at most 0.5·Φ⁻¹(0.001^(1/100)) = 0.750 at σ = 0.5; row 0 has radius 0.521.
    src = tmp_path / "c.tsv"
    src.write_text(HEADER + "0\t3\t3\t0.521\t1\t1.0\n20\t8\t8\t0.76\t1\t2.0\n")
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(tmp_path / "a"), "--n", "100",
                 "--alpha", "0.001"]) == 2
    assert "row 3" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(tmp_path / "b"), "--n", "1000",
                 "--alpha", "0.001"]) == 0


@pytest.mark.parametrize("label", ["with\ttab", "line\nbreak", ""])
def test_import_refuses_a_label_that_breaks_the_tsv(tmp_path, capsys, label):
    src = write(tmp_path / "c.tsv", running_total=False)
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(tmp_path / "o"), "--label", label]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_import_refuses_images_the_run_never_had(tmp_path, capsys):
    run = _synthetic_run(tmp_path)
    src = write(tmp_path / "c.tsv", running_total=False)  # images 0, 20, 40, 60, 80
    before = _tree(tmp_path)
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never had (idx 60, 80)" in err[0]
    assert _tree(tmp_path) == before


def test_import_of_some_of_the_runs_images_warns_and_the_report_counts_them(tmp_path, capsys):
    run = _synthetic_run(tmp_path)
    src = write(tmp_path / "c.tsv", running_total=False, indices=[0, 20])
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(run), "--label", "pub"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of the run's 3 images" in err[0]
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| pub"))
    assert "2/3" in [cell.strip() for cell in row.split("|")]  # its images column
    assert "partial run" in out


def test_import_waits_for_no_one_holding_the_run(tmp_path, capsys):
    from benchbench.results.lock import RunLock

    run = _synthetic_run(tmp_path)
    src = write(tmp_path / "c.tsv", running_total=False, indices=[0, 20, 40])
    with RunLock(run):  # a bench run writing here
        before = _tree(tmp_path)
        assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(run)]) == 2
        assert _tree(tmp_path) == before
    assert "in use by another bench process" in capsys.readouterr().err
    assert main(["import", "cohen", str(src), "--sigma", "0.5", "--out", str(run)]) == 0
