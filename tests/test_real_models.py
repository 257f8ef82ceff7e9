"""Real-world model forms, offline: transformers / timm / robustbench / TorchScript classifiers, DDPM configs
(cosine β, learned variance, v-prediction), class-conditional consistency models, and `bench run` end to end
on CIFAR-10- and ImageNet-64-format data with tiny models saved by save_pretrained."""

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchbench.smoothing.noise import CopyNoise

sys.path.insert(0, str(Path(__file__).parent))
from realworld import (save_class_conditional_cm, save_cosine_learned_ddpm, save_tiny_vit,  # noqa: E402
                       write_cifar10, write_class_map, write_imagenet64)

from benchbench.cli import main  # noqa: E402
from benchbench.errors import BenchError, CheckpointError, InvalidArgument  # noqa: E402
from benchbench.models.classifiers import load_classifier  # noqa: E402
from benchbench.registry import get_purifier  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {
        "cifar": write_cifar10(root / "cifar"),
        "imagenet": _with_class_map(write_imagenet64(root / "imagenet", n=3)),
        "ddpm32": save_cosine_learned_ddpm(root / "ddpm32"),
        "ddpm64": save_cosine_learned_ddpm(root / "ddpm64", size=64),
        "cm32": save_class_conditional_cm(root / "cm32"),
        "cm64": save_class_conditional_cm(root / "cm64", size=64, classes=1000),
        "cm32c5": save_class_conditional_cm(root / "cm32c5", classes=5),
        "vit10": save_tiny_vit(root / "vit10"),
        "vit1000": save_tiny_vit(root / "vit1000", num_labels=1000),
        "vit5": save_tiny_vit(root / "vit5", num_labels=5),
    }


def _with_class_map(root: Path) -> Path:
    write_class_map(root / "Imagenet64_val_npz")
    return root


# --- classifiers: resize and normalisation inside the wrapper ------------------------------------------------


def test_hf_classifier_resizes_and_normalises_inside(world):
    from transformers import ViTForImageClassification

    clf = load_classifier(f"hf:{world['vit10']}")
    vit = ViTForImageClassification.from_pretrained(world["vit10"]).eval()
    x = torch.rand(2, 3, 32, 32)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = vit(pixel_values=(small - mean) / std).logits
        torch.testing.assert_close(clf(x), expected)
    assert clf.fingerprint.startswith("sha256:")


def test_timm_classifier_from_a_saved_folder(tmp_path):
    import timm
    from timm.models import save_for_hf

    net = timm.create_model("test_vit", num_classes=10).eval()
    save_for_hf(net, tmp_path / "timm")
    clf = load_classifier(f"timm:local-dir:{tmp_path / 'timm'}")
    x = torch.rand(2, 3, 32, 32)
    big = F.interpolate(x, size=(160, 160), mode="bicubic", align_corners=False)  # timm's data config
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net((big - 0.5) / 0.5))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    clf2 = load_classifier(f"timm:test_vit:{tmp_path / 'w.pth'}")
    with torch.no_grad():
        torch.testing.assert_close(clf2(x), clf(x))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_classifier_gets_pixels_as_they_are(tmp_path):
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    scripted.save(str(tmp_path / "m.pt"))
    clf = load_classifier(f"torchscript:{tmp_path / 'm.pt'}")
    x = torch.rand(4, 3, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), scripted(x))
    assert clf.fingerprint.startswith("sha256:")


def test_robustbench_classifier_calls_its_documented_load_model(monkeypatch):
    calls = {}

    def load_model(model_name, model_dir, dataset, threat_model):
        calls.update(model_name=model_name, dataset=dataset, threat_model=threat_model)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    package = types.ModuleType("robustbench")
    package.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    clf = load_classifier("robustbench:Standard", dataset="cifar10")
    assert calls == {"model_name": "Standard", "dataset": "cifar10", "threat_model": "Linf"}
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    load_classifier("robustbench:Standard:L2", dataset="cifar10")
    assert calls["threat_model"] == "L2"


def test_missing_extra_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(BenchError, match=r"pip install 'benchbench\[hf\]'"):
        load_classifier("hf:google/vit-base-patch16-224")


def test_hub_classifier_without_network_is_one_line():
    with pytest.raises(CheckpointError, match="cannot fetch classifier") as info:
        load_classifier("hf:nobody-here/no-such-model")
    assert "\n" not in str(info.value)


# --- DDPM configs ----------------------------------------------------------------------------------------------


def test_v_prediction_and_sample_outputs_become_epsilon():
    from benchbench.models.ddpm_ve import to_epsilon

    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 4, 4, generator=gen), torch.randn(3, 3, 4, 4, generator=gen)
    a = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    av = a.view(-1, 1, 1, 1).float()
    x_t = av.sqrt() * x0 + (1 - av).sqrt() * eps
    v = av.sqrt() * eps - (1 - av).sqrt() * x0  # Salimans & Ho 2022
    torch.testing.assert_close(to_epsilon(v, x_t, a, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(to_epsilon(x0, x_t, a, "sample"), eps, atol=1e-4, rtol=1e-4)


def cosine_alphas_cumprod(T=1000, s=0.008):
    """Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s)·π/2), β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999)."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def test_ddpm_reads_cosine_schedule_and_uses_the_mean_channels(world):
    from diffusers import UNet2DModel

    purifier = get_purifier("ddpm", model=str(world["ddpm32"]))
    assert purifier.image_shape == (3, 32, 32)
    ac = cosine_alphas_cumprod()
    sigma = 0.25
    t = int(np.argmax(np.sqrt((1 - ac) / ac) >= 2 * sigma))
    unet = UNet2DModel.from_pretrained(world["ddpm32"], subfolder="unet").eval()
    x = torch.rand(2, 3, 32, 32)
    x_t = math.sqrt(ac[t]) * (2 * x - 1)
    with torch.no_grad():
        out = unet(x_t, torch.full((2,), t)).sample
        assert out.shape[1] == 6  # learned variance: mean and variance channels
        x0 = (x_t - math.sqrt(1 - ac[t]) * out[:, :3]) / math.sqrt(ac[t])
        torch.testing.assert_close(purifier(x, sigma), (x0.clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=1e-5)
        for name, params in (("pfode", {"steps": 3}), ("sde", {"steps": 3})):
            other = get_purifier(name, model=str(world["ddpm32"]), **params)
            noise = CopyNoise.for_copies(0, sigma, 0, range(len(x)))
            y = other(x, sigma, noise) if getattr(other, "stochastic", False) else other(x, sigma)
            assert y.shape == x.shape and torch.isfinite(y).all()


# --- class-conditional consistency models ----------------------------------------------------------------------


class FixedLabel(torch.nn.Module):
    """A 'classifier' whose prediction is the index of the brightest of the first ``classes`` pixels."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1)[:, : self.classes] + 0 * self.w


def test_consistency_class_label_predicted_conditions_on_the_noisy_label(world):
    from diffusers import UNet2DModel

    clf = FixedLabel(10)
    purifier = get_purifier("consistency", model=str(world["cm32"]), class_label="predicted", classifier=clf)
    unet = UNet2DModel.from_pretrained(world["cm32"], subfolder="unet").eval()
    # Karras grid of the saved scheduler (40 levels, σ_max 80): pick a level so that 2σ is on it (no top-up).
    ramp = np.linspace(0, 1, 40)
    grid = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    level = float(grid[30])
    sigma = level / 2
    x_noisy = torch.rand(3, 3, 32, 32)
    labels = x_noisy.flatten(1)[:, :10].argmax(1)
    sd, smin = 0.5, 0.002
    c_skip = sd**2 / ((level - smin) ** 2 + sd**2)
    c_out = (level - smin) * sd / math.sqrt(level**2 + sd**2)
    c_in = 1 / math.sqrt(level**2 + sd**2)
    x = 2 * x_noisy - 1
    t = torch.full((3,), 1000 * 0.25 * math.log(level))
    with torch.no_grad():
        expected = c_skip * x + c_out * unet(c_in * x, t, class_labels=labels).sample
        got = purifier(x_noisy, sigma, CopyNoise.for_copies(0, sigma, 0, range(3)))
        other = c_skip * x + c_out * unet(c_in * x, t, class_labels=(labels + 1) % 10).sample
    torch.testing.assert_close(got, (expected.clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, (other.clamp(-1, 1) + 1) / 2)  # the label matters
    assert purifier.num_classes == 10


def test_consistency_class_label_policy_is_checked(world, tiny_ddpm):
    with pytest.raises(InvalidArgument, match="class-conditional"):
        get_purifier("consistency", model=str(world["cm32"]), class_label="none", classifier=FixedLabel(10))
    auto = get_purifier("consistency", model=str(world["cm32"]), classifier=FixedLabel(10))
    assert auto.class_label == "predicted" and auto.fingerprint.endswith(";class_label=predicted")
    assert get_purifier("consistency", model="digits").class_label == "none"
    with pytest.raises(InvalidArgument, match="needs a class-conditional model"):
        get_purifier("consistency", model="digits", class_label="predicted", classifier=FixedLabel(10))
    with pytest.raises(InvalidArgument, match="expected one of"):
        get_purifier("consistency", model=str(world["cm32"]), class_label="true")


# --- bench run end to end --------------------------------------------------------------------------------------

SMALL = ["--num-images", "2", "--n0", "4", "--n", "8", "--sigmas", "0.25", "--batch-size", "8", "--alpha", "0.1"]


def check_run(out, purifiers_nfe):
    config = json.loads((out / "config.json").read_text())
    files = config["files"]
    assert [f["purifier"].split("(")[0] for f in files] == list(purifiers_nfe)
    for entry in files:
        rows = (out / entry["file"]).read_text().splitlines()
        assert len(rows) == 3  # header + 2 images
        nfe = float(rows[1].split("\t")[7])
        assert nfe == purifiers_nfe[entry["purifier"].split("(")[0]]
    for name in ("summary.csv", "quality.csv", "report.md", "pareto.png", "radius.png", "grid.png"):
        assert (out / name).is_file(), name
    return config


@pytest.mark.slow
def test_bench_run_on_cifar10_format_data(world, tmp_path):
    out = tmp_path / "run"
    # the documented command: a class-conditional CM without class_label gets the predicted label (auto)
    purifiers = (f"ddpm:model={world['ddpm32']},pfode:model={world['ddpm32']}:steps=2,"
                 f"consistency:model={world['cm32']}")
    assert main(["run", "--dataset", "cifar10", "--data-dir", str(world["cifar"]), "--classifier",
                 f"hf:{world['vit10']}", "--purifiers", purifiers, "--out", str(out), *SMALL]) == 0
    config = check_run(out, {"ddpm": 1.0, "pfode": 3.0, "consistency": 1.0})
    exp = config["experiment"]
    assert exp["dataset"] == "cifar10" and exp["image_indices"] == [0, 5]
    assert exp["data"]["official"] is False
    assert exp["classifier"]["ref"] == f"hf:{world['vit10']}"
    assert exp["classifier"]["fingerprint"].startswith("sha256:")
    assert config["environment"]["data_dir"] == str(Path(world["cifar"]).resolve())
    assert exp["purifiers"][2]["model"].endswith(";class_label=predicted")


@pytest.mark.slow
def test_bench_run_on_imagenet64_format_data(world, tmp_path):
    out = tmp_path / "run"
    purifiers = (f"ddpm:model={world['ddpm64']},pfode:model={world['ddpm64']}:steps=2:solver=ddim,"
                 f"consistency:model={world['cm64']}:class_label=predicted")
    assert main(["run", "--dataset", "imagenet64", "--data-dir", str(world["imagenet"]), "--classifier",
                 f"hf:{world['vit1000']}", "--purifiers", purifiers, "--out", str(out), *SMALL]) == 0
    config = check_run(out, {"ddpm": 1.0, "pfode": 2.0, "consistency": 1.0})
    assert config["experiment"]["data"]["label_order"].startswith("sorted wnid")


def test_imagenet64_in_devkit_order_is_refused_naming_map_clsloc(world, tmp_path, capsys):
    """Without map_clsloc.txt the npz's labels are in devkit order; an ImageNet classifier numbers classes by
    sorted wnid, so every certified label would be wrong: one line, exit 2, nothing written."""
    data = tmp_path / "data"
    write_imagenet64(data, n=3)
    out = tmp_path / "run"
    for purifiers in ("identity", f"consistency:model={world['cm64']}:class_label=predicted"):
        capsys.readouterr()
        assert main(["run", "--dataset", "imagenet64", "--data-dir", str(data), "--classifier",
                     f"hf:{world['vit1000']}", "--purifiers", purifiers, "--out", str(out), *SMALL]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "map_clsloc.txt" in err and "Traceback" not in err
        assert not out.exists()
    # Declaring the devkit order (a classifier trained on the npz files) lifts the refusal; the map does too.
    from benchbench.data.dataset import get_dataset
    from benchbench.data.published import devkit_order_refusal

    declared = get_dataset("imagenet64:labels=devkit", "test", data_dir=data)
    assert devkit_order_refusal(declared) is None and declared.meta["label_order"].startswith("devkit")
    assert devkit_order_refusal(get_dataset("imagenet64", "test", data_dir=data)) is not None
    order = write_class_map(data / "Imagenet64_val_npz")
    mapped = get_dataset("imagenet64", "test", data_dir=data)
    assert devkit_order_refusal(mapped) is None
    raw = np.load(data / "Imagenet64_val_npz" / "val_data.npz")["labels"]
    assert mapped.labels.tolist() == [order[int(v) - 1] for v in raw]
    with pytest.raises(InvalidArgument, match="labels=devkit"):
        get_dataset("imagenet64:labels=wnid", "test", data_dir=data)


@pytest.mark.parametrize("case, match", [
    ("ddpm-size", "takes images of shape (1, 8, 8)"),
    ("classes", "has 10 classes"),
    ("cm-classes", "conditioned on 5 classes"),
    ("layout", "cifar-10-batches-py"),
    ("offline", "cannot fetch ddpm"),
])
def test_bad_real_world_input_is_one_line_and_writes_nothing(world, tmp_path, capsys, case, match):
    data, clf, purifiers = world["cifar"], f"hf:{world['vit10']}", "identity"
    if case == "ddpm-size":
        purifiers = "ddpm:model=digits"
    elif case == "classes":
        clf = f"hf:{world['vit5']}"
    elif case == "cm-classes":
        purifiers = f"consistency:model={world['cm32c5']}:class_label=predicted"
    elif case == "layout":
        data = tmp_path
    elif case == "offline":
        purifiers = "ddpm:model=nobody-here/no-such-ddpm"
    out = tmp_path / "run"
    code = main(["run", "--dataset", "cifar10", "--data-dir", str(data), "--classifier", clf,
                 "--purifiers", purifiers, "--out", str(out), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err
    assert not out.exists()


@pytest.mark.slow
def test_hub_ids_resolve_from_the_cache_and_record_the_commit(world, tmp_path):
    """A hub id, offline, from a hub cache laid out as huggingface_hub writes it: the run records the commit."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny--ddpm"
    shutil.copytree(world["ddpm32"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "benchbench.cli", "run", "--dataset", "cifar10", "--data-dir", str(world["cifar"]),
           "--classifier", f"hf:{world['vit10']}", "--purifiers", "ddpm:model=tiny/ddpm", "--out", str(out), *SMALL]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    purifier = json.loads((out / "config.json").read_text())["experiment"]["purifiers"][0]
    assert purifier["model"] == f"hub:tiny/ddpm@{commit}"


@pytest.mark.slow
def test_train_distill_and_finetune_on_cifar10_with_a_local_teacher(world, tmp_path):
    """The seed's pipeline on CIFAR-10-format data: distil a (learned-variance) DDPM folder, fine-tune the
    result; each output is a ConsistencyModelPipeline folder the consistency purifiers load."""
    from diffusers import ConsistencyModelPipeline

    common = ["--dataset", "cifar10", "--data-dir", str(world["cifar"]), "--steps", "2", "--batch-size", "4",
              "--distance", "l2"]
    assert main(["train", "distill", "--teacher", str(world["ddpm32"]), "--out", str(tmp_path / "cd"), *common]) == 0
    pipe = ConsistencyModelPipeline.from_pretrained(tmp_path / "cd")
    assert pipe.unet.config.out_channels == 3  # the teacher's mean channels only
    manifest = json.loads((tmp_path / "cd" / "manifest.json").read_text())
    assert manifest["training_config"]["teacher"] == str(world["ddpm32"])
    assert manifest["metrics"]["seconds_per_step"] > 0
    assert main(["train", "finetune", "--base", str(tmp_path / "cd"), "--out", str(tmp_path / "ft"), *common]) == 0
    purifier = get_purifier("consistency-ft", model=str(tmp_path / "ft"))
    assert purifier(torch.rand(2, 3, 32, 32), 0.5, CopyNoise.for_copies(0, 0.5, 0, range(2))).shape == (2, 3, 32, 32)
    # a teacher whose images are not the dataset's: refused before anything is written
    assert main(["train", "distill", "--teacher", "digits", "--out", str(tmp_path / "bad"), *common]) == 2
    assert not (tmp_path / "bad").exists()
