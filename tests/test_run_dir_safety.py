"""Hostile run directories: file names that leave the directory, tampered radii, broken config fields, and
what `bench merge` and `bench report` say about them (one line on stderr, exit 2, nothing written)."""

import json

import pytest
from scipy.stats import norm

from benchbench.cli import main
from benchbench.results.rundir import _diff, load_rows
from synthetic_run import standard_run, write_run


def tree(root):
    """Every file under ``root`` (paths relative to it) with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _edit_config(run, edit):
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["ABS", "../escaped.tsv", "sub/x.tsv", "config.json", ".hidden.tsv"])
def test_merge_and_report_refuse_file_names_outside_the_run(tmp_path, capsys, name):
    victim = tmp_path / "victim.tsv"
    victim.write_text("precious\n")
    shard = standard_run(tmp_path / "s1")
    bad = str(victim) if name == "ABS" else name
    _edit_config(shard, lambda c: c["files"][0].update(file=bad))
    before = tree(tmp_path)
    assert main(["merge", str(shard), "--out", str(tmp_path / "m"), "--no-report"]) == 2
    assert main(["report", str(shard)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("not a plain .tsv name" in line for line in err)
    assert tree(tmp_path) == before and not (tmp_path / "m").exists()


def test_a_row_file_that_links_outside_the_run_is_refused(tmp_path, capsys):
    run = standard_run(tmp_path / "run")
    name = json.loads((run / "config.json").read_text())["files"][0]["file"]
    outside = tmp_path / "outside.tsv"
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    before = outside.read_bytes()
    assert main(["report", str(run)]) == 2
    assert main(["merge", str(run), "--out", str(tmp_path / "m"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("symbolic link" in line for line in err)
    assert outside.read_bytes() == before and not (tmp_path / "m").exists()


def test_a_tampered_radius_is_refused(tmp_path, capsys):
    run = standard_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    path = run / config["files"][0]["file"]
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines[1:], 1) if line.split("\t")[2] != "-1")  # a certified row
    fields = lines[k].split("\t")
    sigma, pa = config["files"][0]["sigma"], float(fields[6])
    assert float(fields[3]) == pytest.approx(sigma * norm.ppf(pa), rel=1e-5)  # untampered, it reads
    for radius, pa_lower in ((5.0, fields[6]), (5.0, "0.99999999"), (-1.0, fields[6])):
        # A larger radius, a pa_lower raised to match it (beyond what n = 100 at α = 0.001 allow), negative.
        tampered = [*fields[:3], str(radius), fields[4], fields[5], pa_lower, *fields[7:]]
        path.write_text("\n".join([*lines[:k], "\t".join(tampered), *lines[k + 1:]]) + "\n")
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"line {k + 1}" in err[0] and "radius" in err[0]


def test_a_radius_within_what_n_allows_still_reads(tmp_path):
    # σ = 0.25, n = 100, α = 0.001: pa_lower at most 0.001^(1/100) = 0.93325, radius at most 0.375.
    top = 0.001 ** (1 / 100)
    rows = [{"idx": 0, "label": 1, "predict": 1, "radius": round(0.25 * norm.ppf(top), 6), "correct": 1,
             "time": 0.1, "pa_lower": round(top, 6), "nfe": 0, "n": 100}]
    run = write_run(tmp_path / "run", [{"label": "p", "name": "p", "params": {}}], {("p", 0.25): rows})
    assert load_rows(run)["radius"].item() == pytest.approx(0.375, abs=1e-3)


@pytest.mark.parametrize("field,value", [("n", "many"), ("n", 0), ("alpha", "0.001"), ("num_classes", 2.5),
                                         ("image_indices", [0, "x"])])
def test_a_bad_config_field_is_blamed_on_config_json(tmp_path, capsys, field, value):
    run = standard_run(tmp_path / "run")
    _edit_config(run, lambda c: c["experiment"].update({field: value}))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and f"experiment {field}" in err[0] and "line" not in err[0]


def test_a_config_diff_shows_where_long_values_differ():
    purifiers = [{"label": f"p{k}", "name": "sde", "params": {"steps": 10, "note": "x" * 80}} for k in range(3)]
    other = json.loads(json.dumps(purifiers))
    other[2]["params"]["note"] = "x" * 79 + "y"
    (line,) = _diff({"purifiers": purifiers}, {"purifiers": other})
    assert line.startswith("purifiers[2].params.note: ")
    old, new = line.split(": ", 1)[1].split(" -> ")
    assert old != new and old.rstrip('"').endswith("x") and new.rstrip('"').endswith("y")
    # A list that changed length still shows the differing part of each side.
    (line,) = _diff({"p": purifiers}, {"p": purifiers[:2] + [{"label": "zz"}] + purifiers[2:]})
    old, new = line.split(": ", 1)[1].split(" -> ")
    assert old != new and "zz" in new


def test_merge_of_an_incomplete_set_of_shards_warns(tmp_path, capsys):
    shard = standard_run(tmp_path / "s1")
    _edit_config(shard, lambda c: c["environment"].update(shard="1/3"))
    assert main(["merge", str(shard), "--out", str(tmp_path / "m"), "--no-report"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards 2/3, 3/3" in err[0] and "partial" in err[0]
