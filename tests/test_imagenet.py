"""Full-resolution ImageNet (torchvision's layout and a class-folder tree) and image folders with a centre
crop, read from trees the tests write: each crop is checked against PIL by hand, labels against the wnids."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from realworld import save_tiny_vit  # noqa: E402

from benchbench.data.dataset import get_dataset  # noqa: E402
from benchbench.errors import BenchError, InvalidArgument  # noqa: E402

# (class folder, file, width, height): landscape, portrait and odd sizes, JPEG and PNG; sorted as ImageFolder
# orders them (class, then file name), so index i is the i-th entry.
FILES = [("n00000007", "a.JPEG", 40, 24), ("n00000007", "b.png", 24, 40), ("n00000500", "c.JPEG", 33, 50),
         ("n00000999", "d.png", 64, 47)]


def write_tree(folder: Path, files=FILES, seed: int = 0) -> list[Path]:
    rng = np.random.RandomState(seed)
    paths = []
    for wnid, name, w, h in files:
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(folder / wnid / name)
        paths.append(folder / wnid / name)
    return paths


def write_meta_bin(root: Path, seed: int = 3) -> None:
    """torchvision's meta.bin: (wnid → class names for all 1,000 classes, wnid of each val image), the dict
    in devkit-like (shuffled) order."""
    order = np.random.RandomState(seed).permutation(1000)
    torch.save(({f"n{w:08d}": (f"class {w}",) for w in order}, []), root / "meta.bin")


def by_hand(path: Path, size: int, resize: int) -> torch.Tensor:
    """Shorter side to ``resize`` (the longer one truncated, as torchvision's Resize), PIL bilinear, then the
    centre ``size`` square, cut with PIL."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize("layout", ["torchvision", "folders", "folders-val"])
def test_imagenet_reads_both_layouts_with_centre_crops_and_sorted_wnid_labels(tmp_path, layout):
    if layout == "torchvision":
        paths = write_tree(tmp_path / "imagenet" / "val")
        write_meta_bin(tmp_path / "imagenet")
    else:  # a class-folder tree: DDS's data/imagenet/<wnid>, or locuslab/smoothing's $IMAGENET_DIR/val/<wnid>
        paths = write_tree(tmp_path / "imagenet" / ("val" if layout == "folders-val" else ""))
    test = get_dataset("imagenet:size=16:resize=20", "test", data_dir=tmp_path)
    assert test.images.shape == (4, 3, 16, 16) and len(test) == 4
    for i, path in enumerate(paths):
        torch.testing.assert_close(test.images[i], by_hand(path, 16, 20), atol=1e-6, rtol=0)
    torch.testing.assert_close(test.images[[3, 1]], torch.stack([by_hand(paths[3], 16, 20),
                                                                 by_hand(paths[1], 16, 20)]), atol=1e-6, rtol=0)
    if layout == "torchvision":  # the wnid's rank among meta.bin's 1,000 wnids, not among the folders present
        assert test.num_classes == 1000 and test.labels.tolist() == [7, 7, 500, 999]
    else:  # the tree's own folders are the classes
        assert test.num_classes == 3 and test.labels.tolist() == [0, 0, 1, 2]
    assert test.meta["layout"] == layout.split("-")[0] and test.meta["label_order"] == "sorted wnid"
    assert (test.meta["size"], test.meta["resize"], test.meta["crop"]) == (16, 20, "center")
    default = get_dataset("imagenet", "test", data_dir=tmp_path)  # size 256, shorter side 256
    torch.testing.assert_close(default.images[2], by_hand(paths[2], 256, 256), atol=1e-6, rtol=0)


def test_imagenet_decodes_only_the_images_read(tmp_path):
    paths = write_tree(tmp_path / "imagenet")
    paths[1].write_bytes(b"not an image")  # never read below unless asked for
    test = get_dataset("imagenet:size=8", "test", data_dir=tmp_path)
    assert test.images.shape == (4, 3, 8, 8)
    torch.testing.assert_close(test.images[2:4], torch.stack([by_hand(p, 8, 8) for p in paths[2:]]), atol=1e-6, rtol=0)
    with pytest.raises(BenchError, match="cannot decode .*b.png"):
        test.images[1]


def test_imagenet_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError, match="meta.bin beside val"):
        get_dataset("imagenet", "test", data_dir=tmp_path)
    write_tree(tmp_path / "imagenet")
    for spec, match in (("imagenet:size=0", "size must be >= 1"), ("imagenet:crop=none", "bad option"),
                        ("imagenet:size=16:resize=8", "smaller than the crop"), ("imagenet:size=x", "integer")):
        with pytest.raises(InvalidArgument, match=match):
            get_dataset(spec, "test", data_dir=tmp_path)
    with pytest.raises(InvalidArgument, match="test split"):
        get_dataset("imagenet", "train", data_dir=tmp_path)


def test_imagefolder_centre_crop_keeps_the_aspect_ratio(tmp_path):
    files = [("cat", "a.png", 40, 24), ("ant", "b.png", 24, 40)]
    paths = write_tree(tmp_path / "imgs", files)
    ds = get_dataset(f"imagefolder:{tmp_path / 'imgs'}:size=8:crop=center", "test")
    assert ds.images.shape == (2, 3, 8, 8) and ds.labels.tolist() == [0, 1]  # ant, cat
    torch.testing.assert_close(ds.images[0], by_hand(paths[1], 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(ds.images[1], by_hand(paths[0], 8, 8), atol=1e-6, rtol=0)
    wider = get_dataset(f"imagefolder:{tmp_path / 'imgs'}:size=8:crop=center:resize=12", "test")
    torch.testing.assert_close(wider.images[1], by_hand(paths[0], 8, 12), atol=1e-6, rtol=0)
    squeezed = get_dataset(f"imagefolder:{tmp_path / 'imgs'}:size=8", "test")  # no crop: resized to 8×8 as before
    assert not torch.allclose(squeezed.images[1], ds.images[1])
    for spec, match in ((":crop=center", "needs size"), (":size=8:crop=top", "must be 'center'"),
                        (":size=8:resize=12", "goes with crop=center")):
        with pytest.raises(InvalidArgument, match=match):
            get_dataset(f"imagefolder:{tmp_path / 'imgs'}{spec}", "test")


def test_bench_run_on_imagenet_certifies_only_the_selected_images(tmp_path, capsys):
    """--skip 2 over 4 images certifies images 0 and 2; image 1 is not a decodable file and is never read.
    A 1,000-class classifier on a 3-class tree is refused before anything is written."""
    from benchbench.cli import main

    paths = write_tree(tmp_path / "data" / "imagenet")
    paths[1].write_bytes(b"not an image")
    vit3 = save_tiny_vit(tmp_path / "vit3", num_labels=3)
    out = tmp_path / "run"
    args = ["run", "--dataset", "imagenet:size=16", "--data-dir", str(tmp_path / "data"), "--purifiers", "identity",
            "--skip", "2", "--num-images", "2", "--n0", "4", "--n", "8", "--sigmas", "0.25", "--batch-size", "8",
            "--alpha", "0.1", "--no-report"]
    assert main([*args, "--classifier", f"hf:{vit3}", "--out", str(out)]) == 0
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["experiment"]["image_indices"] == [0, 2]
    assert config["experiment"]["data"]["size"] == 16 and config["experiment"]["data"]["crop"] == "center"
    rows = (out / config["files"][0]["file"]).read_text().splitlines()
    assert [r.split("\t")[:2] for r in rows[1:]] == [["0", "0"], ["2", "1"]]
    capsys.readouterr()
    vit1000 = save_tiny_vit(tmp_path / "vit1000", num_labels=1000)
    assert main([*args, "--classifier", f"hf:{vit1000}", "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 3 classes" in err
    assert not (tmp_path / "run2").exists()
