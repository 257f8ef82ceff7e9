"""Plan vs execution: packed tasks, shards + bench merge, one writer per run directory, atomic reports."""

import hashlib
import json
import os

import pandas as pd
import pytest

from benchbench.cli import main
from benchbench.results.lock import RunLock
from benchbench.run.plan import Shard, Task, make_tasks, shard_units, units
from benchbench.results.rundir import tsv_name

ARGS = ["--purifiers", "identity,clamp-test", "--num-images", "5", "--skip", "40", "--sigmas", "0.25,0.5",
        "--n0", "8", "--n", "40", "--alpha", "0.01", "--no-report"]


class Clamp:
    """A deterministic plugin that keeps the test fast."""

    networks = ()

    def __init__(self, device: str = "cpu", dataset: str = "digits"):
        pass

    def __call__(self, x, sigma):
        return x.clamp(0, 1)


@pytest.fixture(autouse=True, scope="module")
def _register():
    from benchbench.registry import register_purifier

    register_purifier("clamp-test")(Clamp)


def tsvs(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    return {f["file"]: pd.read_csv(run_dir / f["file"], sep="\t").drop(columns="time") for f in config["files"]}


def tree(run_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_units_shards_and_tasks():
    all_units = units(["a", "b"], [0.25, 0.5], [0, 10, 20])
    assert len(all_units) == 12 and all_units[0] == ("a", 0.25, 0) and all_units[-1] == ("b", 0.5, 20)
    shards = [shard_units(all_units, Shard(k, 3)) for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(all_units) and all(len(s) == 4 for s in shards)
    assert make_tasks(all_units[:5], 2) == [Task("a", 0.25, (0, 10)), Task("a", 0.25, (20,)), Task("a", 0.5, (0, 10))]
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(Exception, match="--shard must be K/N"):
            Shard.parse(bad)


def test_packed_batches_give_the_rows_of_image_by_image(tmp_path):
    # n0 + n = 48: batch 7 certifies one image at a time in many batches; batch 1000 packs all 5 images of a
    # (purifier, σ) into one batch.
    assert main(["run", *ARGS, "--batch-size", "7", "--out", str(tmp_path / "one")]) == 0
    assert main(["run", *ARGS, "--batch-size", "1000", "--out", str(tmp_path / "packed")]) == 0
    a, b = tsvs(tmp_path / "one"), tsvs(tmp_path / "packed")
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == 5
        pd.testing.assert_frame_equal(a[name], b[name])


def test_shards_merged_equal_the_single_run(tmp_path, capsys):
    assert main(["run", *ARGS, "--out", str(tmp_path / "single")]) == 0
    for k in (1, 2):
        assert main(["run", *ARGS, "--shard", f"{k}/2", "--batch-size", "13", "--out", str(tmp_path / f"s{k}")]) == 0
    halves = [sum(len(t) for t in tsvs(tmp_path / f"s{k}").values()) for k in (1, 2)]
    assert halves == [10, 10]
    assert json.loads((tmp_path / "s1" / "config.json").read_text())["environment"]["shard"] == "1/2"
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m"),
                 "--no-report"]) == 0
    single, merged = tsvs(tmp_path / "single"), tsvs(tmp_path / "m")
    for name in single:
        pd.testing.assert_frame_equal(single[name], merged[name])
    capsys.readouterr()
    # Shards of another experiment are refused, and nothing is created.
    assert main(["run", *ARGS[:-2], "0.05", "--no-report", "--shard", "1/2", "--out", str(tmp_path / "x")]) == 0
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "x"), "--out", str(tmp_path / "m2")]) == 2
    assert "holds a different experiment" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_merge_refuses_shards_that_disagree(tmp_path, capsys):
    for k in (1, 2):
        assert main(["run", *ARGS, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}")]) == 0
    # Copy one row of shard 1 into shard 2 with another prediction.
    name = tsv_name("identity", 0.25)
    first = (tmp_path / "s1" / name).read_text().splitlines()
    fields = first[1].split("\t")
    fields[2], fields[3], fields[4] = "-1", "0", "0"
    with open(tmp_path / "s2" / name, "a") as fh:
        fh.write("\t".join(fields) + "\n")
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 2
    assert "different rows in two directories" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_second_writer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--num-images", "2", "--out", str(out)]) == 0
    before = tree(out)
    with RunLock(out):  # another bench process is writing here
        assert main(["run", *ARGS, "--num-images", "2", "--out", str(out)]) == 2
        assert "is in use by another bench process" in capsys.readouterr().err
        assert tree(out) == before
    assert main(["run", *ARGS, "--num-images", "2", "--out", str(out)]) == 0  # free again: resumes (no-op)


def test_an_interrupted_report_leaves_the_old_one_intact(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--num-images", "2", "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    before = tree(out)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    assert main(["report", str(out)]) == 130
    assert tree(out) == before  # every file old or new, never half; no temporary file left behind


def test_precision_and_noise_device_are_part_of_the_experiment(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--purifiers", "ddpm", "--num-images", "2", "--sigmas", "0.5", "--n0", "8", "--n", "24",
            "--no-report", "--out", str(out)]
    assert main([*args, "--precision", "bf16", "--noise-device", "device"]) == 0  # bf16 autocast runs on CPU
    exp = json.loads((out / "config.json").read_text())["experiment"]
    assert exp["precision"] == "bf16" and exp["noise_device"] == "cpu"  # the run's device here is the CPU
    rows = pd.read_csv(out / tsv_name("ddpm", 0.5), sep="\t")
    assert rows["n"].tolist() == [24, 24] and rows["pa_lower"].between(0, 1).all()
    capsys.readouterr()
    assert main([*args, "--precision", "fp32"]) == 2  # rows of another precision are not mixed in
    assert "precision: \"bf16\" -> \"fp32\"" in capsys.readouterr().err
