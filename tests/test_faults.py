"""Fault injection: the cases a careless or hostile user hits, each run as a real `bench` subprocess on a
tiny config. Each asserts the exit status, a single stderr line, and that the run directory is unchanged
(hashed before and after) or that its rows equal an uninterrupted run's."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchbench.results.rundir import tsv_name

HERE = Path(__file__).parent
FAULTY = [sys.executable, str(HERE / "fault_bench.py")]
TINY = ["--num-images", "2", "--sigmas", "0.5", "--n0", "4", "--n", "8", "--alpha", "0.1", "--no-report"]


def bench(*argv: str, env: dict | None = None, real: bool = False) -> subprocess.CompletedProcess:
    """`bench` with the broken plugins of fault_bench.py registered: as a real subprocess when ``real`` (or
    with an injected OS fault), else in this process through the same ``main`` (each subprocess pays
    seconds of imports, and CI has 2 cores)."""
    if real or env:
        return subprocess.run([*FAULTY, *argv], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})})
    import fault_bench  # noqa: F401  (registers the broken plugins)
    from benchbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def tree_hash(path: Path) -> dict[str, str] | None:
    """Every file under ``path`` (relative name → sha256), or None when it does not exist."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def rows(run_dir: Path, label: str, sigma: float = 0.5) -> pd.DataFrame:
    return pd.read_csv(run_dir / tsv_name(label, sigma), sep="\t").drop(columns="time")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """A finished tiny run of two purifiers, copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("done") / "run"
    proc = bench("run", "--purifiers", "identity,clamp", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(done_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    return out


# --- purifier and classifier outputs ---------------------------------------------------------------------


@pytest.mark.parametrize("name,match", [
    ("nan", "returned NaN"),
    ("inf", "returned inf"),
    ("uint8", "returned dtype uint8"),
    ("as-numpy", "returned a numpy.ndarray, not a torch.Tensor"),
    ("none", "returned None"),
    ("minus-one-to-one", "outside [0, 1]"),
    ("wrong-shape", "returned shape (2, 1, 4, 8) for input (2, 1, 8, 8)"),
    ("raises", "raised RuntimeError: boom inside the plugin"),
    ("factory-raises", "could not be built: ValueError: cannot load my weights"),
    ("networks-none", "networks must be a list or tuple of torch modules"),
])
def test_a_broken_purifier_is_refused_before_anything_is_written(tmp_path, name, match):
    out = tmp_path / "run"
    proc = bench("run", "--purifiers", f"identity,{name}", *TINY, "--out", str(out), real=name == "nan")
    line = one_line(proc)
    assert proc.returncode == 2 and match in line
    if name not in ("factory-raises", "networks-none"):
        assert f"purifier '{name}' at σ=0.5, image 0" in line
    assert not out.exists()


def test_a_purifier_failing_mid_run_is_stopped_and_the_others_finish(tmp_path):
    out = tmp_path / "run"
    # Batch 12 = n0 + n: one image per task and batch, so the pre-run check and image 0 are calls 1 and 2.
    proc = bench("run", "--purifiers", "late-nan,clamp", *TINY[:-1], "--batch-size", "12", "--out", str(out),
                 real=True)
    line = one_line(proc)
    assert proc.returncode == 1
    assert "purifier 'late-nan' at σ=0.5, image 225: returned NaN" in line and "was stopped" in line
    assert list(rows(out, "late-nan")["idx"]) == [0]  # the image before the fault, fully checked
    assert list(rows(out, "clamp")["idx"]) == [0, 225]  # the other purifier ran on
    assert "partial run" in (out / "report.md").read_text()


@pytest.mark.parametrize("name", ["float64", "float16"])
def test_other_float_dtypes_are_cast_not_a_traceback(tmp_path, name):
    proc = bench("run", "--purifiers", f"{name},clamp", *TINY, "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    a, b = rows(tmp_path / "run", name), rows(tmp_path / "run", "clamp")
    assert (a.drop(columns=["purifier", "nfe"]).shape == b.drop(columns=["purifier", "nfe"]).shape)
    assert list(a["predict"]) == list(b["predict"])


def test_a_corrupt_but_readable_classifier_is_refused(tmp_path):
    from benchbench.models.classifiers import load_classifier

    model = load_classifier("digits")
    for p in model.parameters():
        p.data.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-classifier")
    out = tmp_path / "run"
    proc = bench("run", "--purifiers", "identity", "--classifier", str(tmp_path / "nan-classifier"), *TINY,
                 "--out", str(out))
    assert proc.returncode == 2 and "returned NaN logits" in one_line(proc)
    assert not out.exists()


# --- bad flags and directories ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv,match", [
    (["--sigmas", "0.5,0.5"], "sigma listed twice: 0.5 twice"),
    (["--sigmas", "0.5,0.5000001"], "equal to 6 decimals"),
    (["--seed", "-1"], "seed must be an integer between 0 and 2**63 - 1"),
    (["--device", "tpu"], "--device 'tpu': not a torch device"),
    (["--device", "meta"], "--device 'meta': not a device benchbench runs on"),
    (["--device", "mps"], "--device 'mps': not available on this machine"),
    (["--purifiers", "clamp,clamp"], "purifier listed twice"),
])
def test_bad_flags_get_one_line_and_write_nothing(tmp_path, argv, match):
    out = tmp_path / "run"
    args = ["--purifiers", "identity", *TINY]
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    proc = bench("run", *args, "--out", str(out))
    assert proc.returncode == 2 and match in one_line(proc)
    assert not out.exists()


def test_sigma_beyond_the_model_is_refused_before_any_row(tmp_path):
    out = tmp_path / "run"
    proc = bench("run", "--purifiers", "identity,ddpm", *TINY[:2], "--sigmas", "0.5,100", *TINY[4:],
                 "--out", str(out))
    line = one_line(proc)
    assert proc.returncode == 2 and "purifier 'ddpm' at σ=100" in line and "2σ=200" in line
    assert not out.exists()
    # The corrected command then runs in the same directory.
    assert bench("run", "--purifiers", "identity", *TINY, "--out", str(out)).returncode == 0


def test_a_batch_that_cannot_fit_in_memory_is_refused_up_front(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    proc = bench("run", "--purifiers", "identity", "--num-images", "1", "--sigmas", "0.5", "--n", "10000000",
                 "--batch-size", "10000000", "--out", str(out), real=True)
    line = one_line(proc)
    assert proc.returncode == 2 and "needs about" in line and "GB" in line and "--batch-size" in line
    assert not out.exists()
    assert time.perf_counter() - start < 60  # refused, not allocated


@pytest.mark.parametrize("where", ["/proc/benchbench-run", "/sys/kernel/benchbench-run"])
def test_out_in_a_pseudo_file_system_is_refused(where):
    proc = bench("run", "--purifiers", "identity", *TINY, "--out", where, real=where.startswith("/proc"))
    assert proc.returncode == 2 and "pseudo file system" in one_line(proc)


@pytest.mark.parametrize("content", ["[]", '"a string"', "{}", '{"experiment": 3}'])
def test_a_config_that_is_json_but_not_a_run_config(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    before = tree_hash(out)
    proc = bench("run", "--purifiers", "identity", *TINY, "--out", str(out))
    line = one_line(proc)
    assert proc.returncode == 2 and "is not a benchbench run config" in line and len(line) < 250
    assert tree_hash(out) == before
    report = bench("report", str(out))
    assert report.returncode == 2 and "is not a benchbench run config" in one_line(report)


# --- rows on disk ----------------------------------------------------------------------------------------


def _damage(run: Path, label: str, how: str) -> Path:
    path = run / tsv_name(label, 0.5)
    lines = path.read_text().splitlines(keepends=True)
    if how == "garbage":
        lines.insert(2, "this is not a row\n")
    elif how == "non-numeric":
        fields = lines[1].split("\t")
        fields[3] = "abc"
        lines[1] = "\t".join(fields)
    elif how == "half-row-in-the-middle":
        lines[1] = "\t".join(lines[1].split("\t")[:4]) + "\n"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("how,match", [
    ("garbage", "line 3: 1 fields, expected 11"),
    ("non-numeric", "line 2: radius 'abc' is not a number"),
    ("half-row-in-the-middle", "line 2: 4 fields, expected 11"),
])
def test_a_bad_row_is_named_and_never_counted(done_run, tmp_path, how, match):
    run = copy_run(done_run, tmp_path)
    path = _damage(run, "identity", how)
    before = tree_hash(run)
    for argv in (["run", "--purifiers", "identity,clamp", *TINY, "--out", str(run)], ["report", str(run)],
                 ["compare", str(run), "identity", "clamp", "--sigma", "0.5"]):
        proc = bench(*argv)
        line = one_line(proc)
        assert proc.returncode == 2 and path.name in line and match in line, (argv, line)
        assert tree_hash(run) == before


def test_a_refusal_neither_recreates_a_deleted_tsv_nor_drops_a_cut_row(done_run, tmp_path):
    run = copy_run(done_run, tmp_path)
    (run / tsv_name("identity", 0.5)).unlink()
    cut = run / tsv_name("clamp", 0.5)
    cut.write_text(cut.read_text()[:-7])  # the row in flight when a run died
    before = tree_hash(run)
    other = [*TINY[:-2], "0.2", "--no-report"]  # --alpha 0.2
    proc = bench("run", "--purifiers", "identity,clamp", *other, "--out", str(run))
    assert proc.returncode == 2 and "holds a run with a different config (alpha: 0.1 -> 0.2)" in one_line(proc)
    assert tree_hash(run) == before
    # The right command resumes: the deleted file and the cut row are certified again, identically.
    assert bench("run", "--purifiers", "identity,clamp", *TINY, "--out", str(run)).returncode == 0
    for label in ("identity", "clamp"):
        pd.testing.assert_frame_equal(rows(run, label), rows(done_run, label))


def test_labels_that_differ_only_in_dropped_characters_get_their_own_files(tmp_path, tiny_ddpm):
    (tmp_path / "ckpt").mkdir()
    shutil.copytree(tiny_ddpm, tmp_path / "ckpt" / "v1")
    shutil.copytree(tiny_ddpm, tmp_path / "ckpt_v1")
    out = tmp_path / "run"
    a, b = f"ddpm:model={tmp_path}/ckpt/v1", f"ddpm:model={tmp_path}/ckpt_v1"
    proc = bench("run", "--purifiers", f"{a},{b}", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert len({f["file"] for f in config["files"]}) == 2
    for entry in config["files"]:
        assert len(pd.read_csv(out / entry["file"], sep="\t")) == 2
    # The same folder written two ways is one configuration: refused.
    proc = bench("run", "--purifiers", f"{a},ddpm:model={tmp_path}//ckpt/v1", *TINY, "--out", str(tmp_path / "r2"))
    assert proc.returncode == 2 and "purifier listed twice" in one_line(proc)
    assert not (tmp_path / "r2").exists()


# --- reports say what they cover -------------------------------------------------------------------------


def test_a_partial_run_is_reported_with_per_cell_counts_and_a_warning(done_run, tmp_path):
    run = copy_run(done_run, tmp_path)
    path = run / tsv_name("clamp", 0.5)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # 1 of 2 images
    proc = bench("report", str(run))
    assert proc.returncode == 0
    assert "partial run" in one_line(proc) and "clamp 1 of 2" in proc.stderr
    text = (run / "report.md").read_text()
    assert "partial run" in text and "1/2" in text and "over 2 images" not in text


def test_compare_on_too_few_images_says_so(done_run):
    proc = bench("compare", str(done_run), "identity", "clamp", "--sigma", "0.5")
    assert proc.returncode == 0 and "only 2 paired images" in one_line(proc)


def test_quality_copies_are_bounded_by_the_run(done_run, tmp_path):
    run = copy_run(done_run, tmp_path)
    before = tree_hash(run)
    proc = bench("quality", str(run), "--copies", "100000")
    assert proc.returncode == 2 and "copies must lie between 1 and the run's n0 + n = 12" in one_line(proc)
    assert tree_hash(run) == before


# --- the operating system --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault,match", [("ENOSPC", "No space left on device"),
                                         ("EROFS", "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line(tmp_path, fault, match):
    out = tmp_path / "run"
    proc = bench("run", "--purifiers", "identity", *TINY, "--out", str(out), env={"BENCH_FAULT": f"{fault}:run"})
    line = one_line(proc)
    assert proc.returncode == 1 and match in line


def test_debug_shows_the_traceback(tmp_path):
    proc = bench("--debug", "run", "--purifiers", "raises", *TINY, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "boom inside the plugin" in proc.stderr


# --- interrupted runs resume exactly ---------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_run_resumes_to_the_uninterrupted_rows(tmp_path, tiny_ddpm, sig):
    args = ["run", "--purifiers", f"sde:steps=4:model={tiny_ddpm}", "--num-images", "6", "--sigmas", "0.5",
            "--n0", "8", "--n", "200", "--batch-size", "64", "--no-report"]
    full = tmp_path / "full"
    assert bench(*args, "--out", str(full)).returncode == 0
    out = tmp_path / "cut"
    # SIGINT back to its default in the child: a suite started in the background (`cmd &`) passes it on as
    # ignored, and then Ctrl-C could not be simulated at all.
    proc = subprocess.Popen([*FAULTY, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    label = f"sde(steps=4,model={tiny_ddpm})"
    tsv = out / tsv_name(label, 0.5)
    deadline = time.time() + 120
    while time.time() < deadline and not (tsv.exists() and tsv.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err
    assert len(pd.read_csv(tsv, sep="\t")) < 6  # it really was cut short
    assert bench(*args, "--out", str(out), "--batch-size", "37").returncode == 0  # another batch size, too
    pd.testing.assert_frame_equal(rows(out, label), rows(full, label))
