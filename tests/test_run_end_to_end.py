"""`bench run` end to end on tiny configs: the run directory, its rows, resume, and paired noise."""

import json

import pandas as pd
import pytest

from benchbench.cli import main
from benchbench.results.rundir import COLUMNS, RADII, load_rows, tsv_name


def tiny_run(out, tiny_ddpm, *extra):
    return main(["run", "--purifiers", f"identity,ddpm:model={tiny_ddpm}", "--num-images", "3", "--skip", "50",
                 "--sigmas", "0.25,0.5", "--n0", "8", "--n", "40", "--alpha", "0.01", "--batch-size", "16",
                 "--out", str(out), *extra])


def read_tsv(path):
    return pd.read_csv(path, sep="\t")


def test_run_writes_the_run_directory(tmp_path, tiny_ddpm, capsys):
    out = tmp_path / "run"
    assert tiny_run(out, tiny_ddpm) == 0
    printed = capsys.readouterr().out
    assert "acc@0.5" in printed and str(out) in printed

    config = json.loads((out / "config.json").read_text())
    exp = config["experiment"]
    assert exp["image_indices"] == [0, 50, 100]
    assert exp["sigmas"] == [0.25, 0.5] and exp["n0"] == 8 and exp["n"] == 40 and exp["alpha"] == 0.01
    assert [p["label"] for p in exp["purifiers"]] == ["identity", f"ddpm(model={tiny_ddpm})"]
    assert exp["purifiers"][1]["model"].startswith("sha256:")
    assert exp["classifier"]["fingerprint"].startswith("sha256:")
    assert {"torch", "diffusers", "benchbench"} <= set(config["environment"]["versions"])
    assert config["environment"]["device"] == "cpu"

    assert len(config["files"]) == 4
    for entry in config["files"]:
        rows = read_tsv(out / entry["file"])
        assert tuple(rows.columns) == COLUMNS
        assert list(rows["idx"]) == [0, 50, 100]
        assert set(rows["correct"]) <= {0, 1}
        assert (rows["n"] == 40).all()
        assert ((rows["predict"] == rows["label"]) & (rows["predict"] >= 0)).astype(int).tolist() == \
            rows["correct"].tolist()
        # NFE counted from network calls: one UNet call per noisy sample for ddpm, none for identity.
        assert (rows["nfe"] == (1.0 if entry["purifier"].startswith("ddpm") else 0.0)).all()

    # The summary is recomputable from the rows.
    summary = pd.read_csv(out / "summary.csv")
    rows = load_rows(out)
    for _, s in summary.iterrows():
        g = rows[(rows["purifier"] == s["purifier"]) & (rows["sigma"] == s["sigma"])]
        for r in RADII:
            assert s[f"acc@{r:g}"] == pytest.approx(((g["correct"] == 1) & (g["radius"] >= r)).mean())
        assert s["acr"] == pytest.approx((g["radius"] * g["correct"]).mean())
        assert s["sec_per_image"] == pytest.approx(g["time"].mean())
    assert "| identity" in (out / "summary.md").read_text()


def test_results_do_not_depend_on_batch_size(tmp_path, tiny_ddpm):
    assert tiny_run(tmp_path / "a", tiny_ddpm) == 0
    assert tiny_run(tmp_path / "b", tiny_ddpm, "--batch-size", "7") == 0
    for file in (tmp_path / "a").glob("*.tsv"):
        a, b = read_tsv(file), read_tsv(tmp_path / "b" / file.name)
        pd.testing.assert_frame_equal(a.drop(columns="time"), b.drop(columns="time"))


def test_rerun_resumes_and_drops_only_the_row_in_flight(tmp_path, tiny_ddpm):
    out = tmp_path / "run"
    assert tiny_run(out, tiny_ddpm) == 0
    first = {f.name: f.read_text() for f in out.glob("*.tsv")}
    target = sorted(first)[0]
    lines = first[target].splitlines(keepends=True)
    # Simulate a crash: last complete row gone, a half-written row left behind.
    (out / target).write_text("".join(lines[:-1]) + lines[-1][:5])
    assert tiny_run(out, tiny_ddpm) == 0
    again = read_tsv(out / target)
    assert list(again["idx"]) == [0, 50, 100]
    expected = pd.read_csv(pd.io.common.StringIO(first[target]), sep="\t")
    pd.testing.assert_frame_equal(again.drop(columns="time"), expected.drop(columns="time"))
    for name, text in first.items():
        if name != target:
            assert (out / name).read_text() == text  # finished files are left alone


def test_every_purifier_sees_the_same_noise(tmp_path, tiny_ddpm):
    # identity then classifier ≡ the plain smoothed classifier: a run with only identity gives the same rows
    # as identity inside a run with more purifiers, whatever the purifier order.
    assert tiny_run(tmp_path / "both", tiny_ddpm) == 0
    assert main(["run", "--purifiers", "identity", "--num-images", "3", "--skip", "50", "--sigmas", "0.25,0.5",
                 "--n0", "8", "--n", "40", "--alpha", "0.01", "--batch-size", "16",
                 "--out", str(tmp_path / "alone")]) == 0
    for sigma in (0.25, 0.5):
        name = tsv_name("identity", sigma)
        pd.testing.assert_frame_equal(read_tsv(tmp_path / "both" / name).drop(columns="time"),
                                      read_tsv(tmp_path / "alone" / name).drop(columns="time"))


@pytest.mark.slow
def test_ddpm_certifies_more_than_identity_on_the_embedded_default(tmp_path):
    # The classifier is trained on clean digits, so at σ = 0.5 it needs the denoiser.
    out = tmp_path / "run"
    assert main(["run", "--purifiers", "identity,ddpm", "--num-images", "30", "--sigmas", "0.5", "--n0", "16",
                 "--n", "100", "--alpha", "0.01", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("purifier")
    assert summary.loc["ddpm", "acc@0"] >= summary.loc["identity", "acc@0"] + 0.2
    assert summary.loc["ddpm", "acr"] > summary.loc["identity", "acr"]


def test_stochastic_purifier_rows_do_not_depend_on_batch_size(tmp_path, tiny_ddpm):
    # sde's step noise and consistency's top-up/multistep noise are keyed per noisy copy.
    specs = f"sde:steps=3:model={tiny_ddpm},consistency:steps=2"
    for bs in ("7", "64", "1000"):
        assert main(["run", "--purifiers", specs, "--num-images", "2", "--skip", "100", "--sigmas", "0.5",
                     "--n0", "8", "--n", "72", "--alpha", "0.01", "--batch-size", bs, "--no-report",
                     "--out", str(tmp_path / bs)]) == 0
    for label in (f"sde(steps=3,model={tiny_ddpm})", "consistency(steps=2)"):
        name = tsv_name(label, 0.5)
        first = read_tsv(tmp_path / "7" / name).drop(columns="time")
        assert len(first) == 2
        for bs in ("64", "1000"):
            pd.testing.assert_frame_equal(first, read_tsv(tmp_path / bs / name).drop(columns="time"))
