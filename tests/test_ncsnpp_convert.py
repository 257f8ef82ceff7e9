"""`bench convert ncsnpp-flax`: openai's consistency_models_cifar10 checkpoints (flax NCSN++) become folders the
`consistency` purifier loads, and compute what the original computes.

The checkpoints are written here in the original's on-disk format (tests/reference/flax_msgpack.py) with
random weights of the original architecture at reduced width; the converted model is compared with an
independent numpy implementation of the original flax forward pass and consistency function
(tests/reference/ncsnpp_flax.py), not with the converter's own mapping."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realworld import save_tiny_vit, write_cifar10  # noqa: E402
from reference.flax_msgpack import write_train_state  # noqa: E402
from reference.ncsnpp_flax import CD_CIFAR10, consistency_fn, init_params  # noqa: E402

from benchbench.cli import main  # noqa: E402
from benchbench.models.consistency import load_consistency  # noqa: E402
from benchbench.registry import get_purifier  # noqa: E402

# Reduced width and depth, every structural feature kept: two down-samplings (so the residual input pyramid
# runs twice), attention in the down path, the middle and the up path, channel changes and BigGAN up/down blocks.
SMALL = dict(CD_CIFAR10, nf=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), image_size=16)
SMALL_SETS = ["nf=16", "ch_mult=1,2,2", "num_res_blocks=2", "attn_resolutions=8", "image_size=16"]
TOL = 1e-5  # max abs, float32 against the float64 reference


def flags(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ncsnpp")
    ema, raw = init_params(SMALL, seed=0), init_params(SMALL, seed=1)
    ckpt = write_train_state(root / "checkpoint_80", params_ema=ema, params=raw)
    assert main(["convert", "ncsnpp-flax", str(ckpt), "--out", str(root / "cm"), *flags(SMALL_SETS)]) == 0
    return {"root": root, "ckpt": ckpt, "folder": root / "cm", "ema": ema, "raw": raw}


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2)).float()


def test_converted_model_equals_the_original_consistency_function(converted):
    model = load_consistency(str(converted["folder"]))
    x = np.random.RandomState(2).randn(3, 16, 16, 3)
    worst = 0.0
    for sigma in (0.002, 0.01, 0.3, 1.0, 2.0, 80.0):
        ref = consistency_fn(converted["ema"], x, np.full(3, sigma), SMALL)  # params_ema: what the samplers use
        with torch.no_grad():
            got = model(nchw(x), sigma).numpy().transpose(0, 2, 3, 1)
        worst = max(worst, float(np.abs(got - ref).max()))
        assert np.abs(ref).max() > 0.5  # a live output, not a collapsed one
    assert worst <= TOL, worst
    # The per-sample σ path (training, multistep) gives the same values.
    sigmas = np.array([0.05, 0.7, 5.0])
    with torch.no_grad():
        got = model(nchw(x), torch.tensor(sigmas)).numpy().transpose(0, 2, 3, 1)
    assert np.abs(got - consistency_fn(converted["ema"], x, sigmas, SMALL)).max() <= TOL


def test_consistency_purifier_equals_the_original_at_the_original_grid(converted):
    purifier = get_purifier("consistency", model=str(converted["folder"]), sigma_mode="exact")
    # The scheduler holds the original's grid: Karras levels from t_max = 80 to t_min = 0.002, ρ = 7, N = 18.
    ramp = np.linspace(0, 1, 18)
    karras = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np.allclose(purifier.model.sigmas.numpy(), karras, rtol=1e-12)
    x_noisy = np.random.RandomState(4).rand(2, 16, 16, 3) * 1.2 - 0.1
    for sigma in (0.12, 0.25, 0.5, 1.0):
        with torch.no_grad():
            got = purifier(nchw(x_noisy), sigma).numpy().transpose(0, 2, 3, 1)
        ref = (np.clip(consistency_fn(converted["ema"], 2 * x_noisy - 1, np.full(2, 2 * sigma), SMALL), -1, 1) + 1) / 2
        assert np.abs(got - ref).max() <= TOL
    assert len(purifier.networks) == 1 and purifier.image_shape == (3, 16, 16)


def test_weights_params_converts_the_raw_parameters_instead(converted, tmp_path):
    out = tmp_path / "raw"
    assert main(["convert", "ncsnpp-flax", str(converted["ckpt"]), "--out", str(out), "--set", "weights=params",
                 *flags(SMALL_SETS)]) == 0
    x = np.random.RandomState(3).randn(1, 16, 16, 3)
    with torch.no_grad():
        got = load_consistency(str(out))(nchw(x), 1.0).numpy().transpose(0, 2, 3, 1)
    assert np.abs(got - consistency_fn(converted["raw"], x, np.ones(1), SMALL)).max() <= TOL
    assert np.abs(got - consistency_fn(converted["ema"], x, np.ones(1), SMALL)).max() > 1e-2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flags"]["weights"] == "params" and manifest["flags"]["nf"] == 16


def _corrupt(root: Path, case: str, ckpt: Path) -> Path:
    if case == "missing":
        return root / "no-such-checkpoint"
    path = root / case
    if case == "truncated":
        path.write_bytes(ckpt.read_bytes()[:5000])
    elif case == "torch-file":
        torch.save({"weight": torch.zeros(2)}, path)
    elif case == "no-ema":
        import msgpack

        path.write_bytes(msgpack.packb({"step": 1, "params": {}}))
    return path


@pytest.mark.parametrize("case, sets, match", [
    ("nf", ["nf=32"], "GaussianFourierProjection_0/W has shape (16,), the flags give (32,) (check --set nf)"),
    ("blocks", ["num_res_blocks=1"], "(check --set nf, ch_mult, num_res_blocks)"),
    ("attention", ["attn_resolutions=16"],
     "AttnBlockpp_0/GroupNorm_0/scale has shape (32,), the flags give (16,) (check --set attn_resolutions, image_size)"),
    ("defaults", [], "GaussianFourierProjection_0/W has shape (16,), the flags give (128,)"),
    ("fixed", ["progressive=output_skip"], "only progressive=none is supported"),
    ("unknown", ["nff=16"], "did you mean 'nf'"),
    ("bad-value", ["ch_mult=two"], "ch_mult=two: expected positive integers"),
    ("missing", None, "no checkpoint file at"),
    ("truncated", None, "corrupt flax checkpoint"),
    ("torch-file", None, "corrupt flax checkpoint"),
    ("no-ema", None, "holds no 'params_ema' parameter tree"),
    ("exists", None, "already exists"),
])
def test_bad_checkpoint_or_flags_is_one_line_and_writes_nothing(converted, tmp_path, capsys, case, sets, match):
    ckpt, out = converted["ckpt"], tmp_path / "out"
    if sets is None:
        sets = SMALL_SETS
        ckpt = ckpt if case == "exists" else _corrupt(tmp_path, case, ckpt)
        if case == "exists":
            out.mkdir()
            (out / "keep.txt").write_text("mine")
    else:
        sets = [s for s in SMALL_SETS if s.split("=")[0] not in {x.split("=")[0] for x in sets}] + sets
        if case == "defaults":
            sets = []
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["convert", "ncsnpp-flax", str(ckpt), "--out", str(out), *flags(sets)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no temporary left behind
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_converted_ncsnpp_runs_bench_run_on_cifar10(tmp_path):
    cfg = dict(CD_CIFAR10, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)
    ckpt = write_train_state(tmp_path / "checkpoint_80", init_params(cfg, seed=0))
    folder, out = tmp_path / "cm", tmp_path / "run"
    assert main(["convert", "ncsnpp-flax", str(ckpt), "--out", str(folder), "--set", "nf=16", "--set", "ch_mult=1,2",
                 "--set", "num_res_blocks=1"]) == 0
    data, vit = write_cifar10(tmp_path / "cifar"), save_tiny_vit(tmp_path / "vit")
    assert main(["run", "--dataset", "cifar10", "--data-dir", str(data), "--classifier", f"hf:{vit}",
                 "--purifiers", f"consistency:model={folder}", "--num-images", "2", "--n0", "4", "--n", "8",
                 "--sigmas", "0.25", "--batch-size", "8", "--alpha", "0.1", "--out", str(out), "--no-report"]) == 0
    config = json.loads((out / "config.json").read_text())
    [entry] = config["files"]
    rows = (out / entry["file"]).read_text().splitlines()
    assert len(rows) == 3 and float(rows[1].split("\t")[7]) == 1.0  # two images, one network call per sample
    assert config["experiment"]["purifiers"][0]["model"].startswith("sha256:")
