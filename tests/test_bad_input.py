"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing already written lost."""

import json
import subprocess
import sys

import pytest

from benchbench.cli import main
from conftest import BENCH

TINY = ["--num-images", "1", "--sigmas", "0.5", "--n0", "2", "--n", "4"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv,match", [
    (["--purifiers", "ddpn"], "unknown purifier 'ddpn'; did you mean 'ddpm'?"),
    (["--purifiers", "identity", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--purifiers", "identity", "--sigmas", "0"], "sigma must be a finite number > 0"),
    (["--purifiers", "identity", "--sigmas", "0.25,-1"], "sigma must be a finite number > 0"),
    (["--purifiers", "identity", "--sigmas", "nan"], "sigma must be a finite number > 0"),
    (["--purifiers", "identity", "--sigmas", "inf"], "sigma must be a finite number > 0"),
    (["--purifiers", "identity", "--sigmas", "half"], "sigma must be a number"),
    (["--purifiers", "identity", "--n0", "0"], "n0 must be an integer >= 1"),
    (["--purifiers", "identity", "--n", "0"], "n must be an integer >= 1"),
    (["--purifiers", "identity", "--alpha", "1.5"], "alpha must lie strictly between 0 and 1"),
    (["--purifiers", "identity", "--alpha", "0"], "alpha must lie strictly between 0 and 1"),
    (["--purifiers", "identity", "--num-images", "0"], "num-images must be >= 1"),
    (["--purifiers", "ddpm:steps=3"], "no parameter 'steps'"),
])
def test_bad_run_arguments(capsys, tmp_path, argv, match):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", *argv, "--out", str(out))
    assert code == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_argparse_errors_are_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--n", "many"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_checkpoint(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--purifiers", f"ddpm:model={tmp_path / 'nowhere'}", *TINY,
                        "--out", str(tmp_path / "run"))
    assert code == 2 and "not found" in err and "nowhere" in err
    code, err = run_cli(capsys, "run", "--purifiers", "identity", "--classifier", str(tmp_path / "nope"), *TINY,
                        "--out", str(tmp_path / "run"))
    assert code == 2 and "classifier checkpoint" in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint(capsys, tmp_path, tiny_ddpm):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ddpm, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated download
    code, err = run_cli(capsys, "run", "--purifiers", f"ddpm:model={broken}", *TINY, "--out", str(tmp_path / "r"))
    assert code == 2 and "corrupt or incomplete ddpm checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_hub_id_without_network(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--purifiers", "ddpm:model=google/ddpm-cifar10-32", *TINY,
                        "--out", str(tmp_path / "r"))
    assert code == 2 and "cannot fetch ddpm 'google/ddpm-cifar10-32' from the hub" in err
    assert len(err.strip().splitlines()) == 1


def test_a_directory_holding_another_config_is_left_untouched(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--purifiers", "identity", *TINY, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli(capsys, "run", "--purifiers", "identity", *TINY[:-2], "--n", "8", "--out", str(out))
    assert code == 2
    assert "holds a run with a different config (n: 4 -> 8)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_directory_that_is_not_a_run_is_left_untouched(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = run_cli(capsys, "run", "--purifiers", "identity", *TINY, "--out", str(out))
    assert code == 2 and "not a benchbench run directory" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_corrupt_config_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{half")
    code, err = run_cli(capsys, "run", "--purifiers", "identity", *TINY, "--out", str(out))
    assert code == 2 and "not valid JSON" in err
    assert (out / "config.json").read_text() == "{half"


def test_train_refuses_to_overwrite(capsys, tmp_path):
    (tmp_path / "model.safetensors").write_text("precious")
    code, err = run_cli(capsys, "train", "classifier", "--out", str(tmp_path))
    assert code == 2 and "already exists and is not empty" in err
    assert (tmp_path / "model.safetensors").read_text() == "precious"


def test_the_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([*BENCH, "run", "--purifiers", "nope", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("bench: error: unknown purifier 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert json.dumps(proc.stdout) == '""'


def test_help_does_not_import_the_models():
    # `bench --help` and every argument error are answered before torch and diffusers load (they took
    # 15-20 s to import on the 2-core machine when the parser pulled in the consistency-model code).
    code = ("import sys; from benchbench.cli import _build_parser; _build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
