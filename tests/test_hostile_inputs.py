"""Hostile inputs to datasets, runs and plugins: each gets one line on stderr and a non-zero exit, runs no
code from a data file, and leaves nothing half-written."""

from __future__ import annotations

import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from realworld import write_cifar10, write_imagenet64  # noqa: E402

from benchbench.cli import main  # noqa: E402
from benchbench.data.dataset import get_dataset  # noqa: E402
from benchbench.errors import BenchError  # noqa: E402

TINY = ["--num-images", "1", "--sigmas", "0.5", "--n0", "2", "--n", "4", "--no-report"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- CIFAR-10 pickles ------------------------------------------------------------------------------------


class _Marker:
    """Unpickling this creates a file: what a crafted batch would do with os.system instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(capsys, tmp_path):
    write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": _Marker(marker), "labels": [0] * 10}))
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                        "--purifiers", "identity", *TINY, "--out", str(out))
    line = one_line(err)
    assert code == 2 and str(batch) in line and "references io.open" in line
    assert not marker.exists() and not out.exists()


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _py2_int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the release's were (Python 2, protocol 2): str as BINSTRING, the array by
    numpy.core.multiarray._reconstruct with a uint8 dtype."""
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
             + b"\x87R(" + _py2_int(1) + _py2_int(data.shape[0]) + _py2_int(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R(" + _py2_int(3)
             + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb\x89"
             + _py2_str(data.tobytes()) + b"tb")
    return (b"\x80\x02}q\x00(" + _py2_str(b"data") + array + _py2_str(b"labels") + b"](" +
            b"".join(_py2_int(v) for v in labels) + b"e" + _py2_str(b"batch_label") + _py2_str(b"testing") + b"u.")


def test_the_release_pickle_format_still_loads(tmp_path):
    write_cifar10(tmp_path)  # the fixtures: Python 3 pickles (protocol 5)
    data = np.random.RandomState(3).randint(0, 256, (10, 3072)).astype(np.uint8)
    labels = [int(v) for v in np.random.RandomState(4).randint(0, 10, 10)]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(_py2_batch(data, labels))
    assert pickle.loads(_py2_batch(data, labels), encoding="latin1")["labels"] == labels  # the builder is right
    test = get_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.labels.tolist() == labels
    assert test.images.mul(255).round().to(dtype=test.images.dtype).numpy().reshape(10, 3072).tolist() == \
        data.astype(np.float32).tolist()
    assert len(get_dataset("cifar10", "train", data_dir=tmp_path)) == 18  # protocol-5 batches beside it


def test_a_cifar_array_of_another_dtype_is_refused(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.float32), "labels": [0] * 10}))
    with pytest.raises(BenchError, match="dtype"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


def test_a_cifar_label_outside_the_classes_is_refused_on_load(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"][3] = 99
    batch.write_bytes(pickle.dumps(entry))
    with pytest.raises(BenchError, match=r"row 3 has label 99, not a class \(0…9\)") as info:
        get_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(batch) in str(info.value) and len(str(info.value).splitlines()) == 1


# --- ImageNet-64 npz and image folders ------------------------------------------------------------------


def _npz(root: Path, data: np.ndarray, labels: np.ndarray) -> Path:
    (root / "Imagenet64_val_npz").mkdir(parents=True)
    np.savez(root / "Imagenet64_val_npz" / "val_data.npz", data=data, labels=labels)
    return root


def test_imagenet64_float_data_is_refused_not_divided_by_255(capsys, tmp_path):
    data = np.random.RandomState(0).rand(2, 12288).astype(np.float32)  # [0, 1]: /255 would make black images
    _npz(tmp_path / "data", data, np.array([1, 2]))
    code, err = run_cli(capsys, "run", "--dataset", "imagenet64", "--data-dir", str(tmp_path / "data"),
                        "--purifiers", "identity", *TINY, "--out", str(tmp_path / "run"))
    assert code == 2 and "dtype float32" in one_line(err) and "uint8" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_imagenet64_npz_is_one_clear_line(capsys, tmp_path):
    _npz(tmp_path / "data", np.zeros((0, 12288), np.uint8), np.zeros(0, np.int64))
    code, err = run_cli(capsys, "run", "--dataset", "imagenet64", "--data-dir", str(tmp_path / "data"),
                        "--purifiers", "identity", *TINY, "--out", str(tmp_path / "run"))
    assert code == 2 and "holds no images" in one_line(err) and "unexpected" not in err


def test_a_truncated_image_is_named_and_not_called_resumable(capsys, tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "imgs" / cls / "x.png")
    bad = tmp_path / "imgs" / "b" / "x.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # cut inside the image data
    code, err = run_cli(capsys, "run", "--dataset", f"imagefolder:{tmp_path / 'imgs'}", "--classifier", "digits",
                        "--purifiers", "identity", *TINY, "--out", str(tmp_path / "run"))
    line = one_line(err)
    assert code == 2 and str(bad) in line and "replace or remove" in line and "resumes" not in line
    assert not (tmp_path / "run").exists()


# --- models ----------------------------------------------------------------------------------------------


def test_a_full_run_with_a_torchscript_classifier(capsys, tmp_path):
    import warnings

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.warns(FutureWarning):  # torch deprecates scripting; its users still ship such files
        torch.jit.save(torch.jit.script(net), str(tmp_path / "clf.pt"))
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:  # what the console script would print on stderr
        warnings.simplefilter("always")
        code = main(["run", "--purifiers", "identity,ddpm", "--classifier", f"torchscript:{tmp_path / 'clf.pt'}",
                     "--num-images", "2", "--sigmas", "0.5", "--n0", "2", "--n", "4", "--no-report", "--out",
                     str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.strip() == "" and [str(w.message) for w in caught] == []  # not even torch's notice
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 3  # a row per purifier: both certified with it
    config = (out / "config.json").read_text()
    assert "torchscript:" in config


def test_a_file_that_is_not_torchscript_is_exactly_one_line(capsys, tmp_path):
    import warnings

    (tmp_path / "clf.pt").write_bytes(b"not a TorchScript archive")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_cli(capsys, "run", "--purifiers", "identity", "--classifier",
                            f"torchscript:{tmp_path / 'clf.pt'}", *TINY, "--out", str(tmp_path / "r"))
    assert code == 2 and "is not a TorchScript file" in one_line(err)
    assert [str(w.message) for w in caught] == []


def test_a_missing_weights_file_is_exactly_one_line(capsys, tmp_path):
    import shutil

    from benchbench.models.store import embedded_path

    folder = tmp_path / "ddpm"
    shutil.copytree(embedded_path("digits", "ddpm"), folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    code, err = run_cli(capsys, "run", "--purifiers", f"ddpm:model={folder}", *TINY, "--out", str(tmp_path / "r"))
    assert code == 2 and "incomplete ddpm checkpoint" in one_line(err)


# --- plugins ---------------------------------------------------------------------------------------------


def test_a_purifier_calling_sys_exit_before_the_run_is_refused(capsys, tmp_path):
    import fault_bench  # noqa: F401  (registers the broken purifiers)

    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", "--purifiers", "identity,exits", *TINY, "--out", str(out))
    line = one_line(err)
    assert code == 2 and "purifier 'exits' at σ=0.5, image 0 called sys.exit(0)" in line
    assert not out.exists()


def test_a_purifier_calling_sys_exit_mid_run_is_stopped_and_the_others_finish(capsys, tmp_path):
    import fault_bench  # noqa: F401

    out = tmp_path / "run"
    # Batch 6 = n0 + n: one image per call, so the pre-run check and image 0 are calls 1 and 2.
    code = main(["run", "--purifiers", "late-exit,identity", "--num-images", "2", "--sigmas", "0.5", "--n0", "2",
                 "--n", "4", "--batch-size", "6", "--no-report", "--out", str(out)])
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert code == 1
    assert "purifier 'late-exit' at σ=0.5, image 225 called sys.exit(0)" in line and "was stopped" in line
    assert "| identity" in captured.out and "| late-exit" in captured.out  # the summary is printed
    summary = (out / "summary.csv").read_text()
    assert "identity,0.5,2," in summary and "late-exit,0.5,1," in summary


# --- executors -------------------------------------------------------------------------------------------


def test_an_unreachable_ray_address_is_refused_before_anything_is_written(tmp_path):
    import os
    import subprocess

    pytest.importorskip("ray", reason="the test extra installs ray")
    from conftest import BENCH

    out = tmp_path / "run"
    # Port 1 on loopback: nothing listens there. Ray itself would retry it for minutes, printing as it goes.
    proc = subprocess.run([*BENCH, "run", "--purifiers", "identity", *TINY, "--executor", "ray", "--address",
                           "127.0.0.1:1", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "cannot reach a Ray cluster at 127.0.0.1:1" in line
    assert not out.exists()


def test_a_ray_address_check_needs_no_cluster():
    from benchbench.run.executors import check_reachable

    with pytest.raises(BenchError, match="cannot reach a Ray cluster at ray://127.0.0.1:1"):
        check_reachable("ray://127.0.0.1:1", timeout=2)
    check_reachable(None)
    check_reachable("auto")  # left to Ray: it finds a running cluster on this machine


# --- the data a run certified ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory) -> dict[str, Path]:
    """Two CIFAR-10-format folders with the same layout and meta but other images and labels, and a
    TorchScript classifier for them."""
    import warnings

    import torch

    root = tmp_path_factory.mktemp("cifar")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))),
                       str(root / "clf.pt"))
    return {"a": write_cifar10(root / "a", seed=0), "b": write_cifar10(root / "b", seed=1),
            "classifier": root / "clf.pt"}


def _cifar_run(cifar_runs: dict[str, Path], data: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "cifar10", "--data-dir", str(cifar_runs[data]), "--classifier",
            f"torchscript:{cifar_runs['classifier']}", "--purifiers", "identity", "--num-images", "2", "--sigmas",
            "0.5", "--n0", "2", "--n", "4", "--no-report", "--out", str(out), *extra]


def test_resuming_on_other_data_is_refused_and_changes_nothing(capsys, tmp_path, cifar_runs):
    out = tmp_path / "run"
    assert main(_cifar_run(cifar_runs, "a", out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli(capsys, *_cifar_run(cifar_runs, "b", out))
    assert code == 2 and "holds a run with a different config (data_hash:" in one_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(_cifar_run(cifar_runs, "a", out)) == 0  # the same data resumes (nothing left to do)


def test_merging_shards_run_on_other_data_is_refused(capsys, tmp_path, cifar_runs):
    assert main(_cifar_run(cifar_runs, "a", tmp_path / "s1", "--shard", "1/2")) == 0
    assert main(_cifar_run(cifar_runs, "b", tmp_path / "s2", "--shard", "2/2")) == 0
    capsys.readouterr()
    code, err = run_cli(capsys, "merge", "--no-report", "--out", str(tmp_path / "merged"), str(tmp_path / "s1"),
                        str(tmp_path / "s2"))
    assert code == 2 and "holds a different experiment" in one_line(err) and "data_hash" in err
    assert not (tmp_path / "merged").exists()


def test_the_data_hash_follows_pixels_and_labels_only(tmp_path):
    write_cifar10(tmp_path / "a", seed=0)
    test = get_dataset("cifar10", "test", data_dir=tmp_path / "a")
    same = get_dataset("cifar10", "test", data_dir=tmp_path / "a")
    assert test.content_hash([0, 5]) == same.content_hash([0, 5]) != test.content_hash([0, 6])
    labels, images = test.labels.clone(), test.images.clone()
    labels[5] = (labels[5] + 1) % 10
    images[0, 2, 31, 31] += 1 / 255
    for other in (type(test)(test.name, "test", test.images, labels, 10), type(test)(test.name, "test", images,
                                                                                     test.labels, 10)):
        assert other.content_hash([0, 5]) != test.content_hash([0, 5])


# --- flags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,match", [
    (["--purifiers", "sde:steps=2:steps=3"], "parameter 'steps' given twice in 'sde:steps=2:steps=3'"),
    (["--purifiers", "identity", "--num-images", "10", "--skip", "100"],
     "--skip 100 over the 450 test images gives 5 images, not the 10 asked for"),
    (["--purifiers", "consistency", "--sigmas", "100"], "needs noise level 2σ=200, above this consistency model's "
                                                        "σ_max=90"),
])
def test_flags_that_were_silently_reinterpreted_are_refused(capsys, tmp_path, argv, match):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", *argv, "--n0", "2", "--n", "4", "--no-report", "--out", str(out))
    assert code == 2 and match in one_line(err)
    assert not out.exists()
