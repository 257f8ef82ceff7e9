"""CIFAR-10, ImageNet-64 and image-folder datasets, read from files the tests write in the official layouts."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realworld import CIFAR_CLASSES, write_cifar10, write_imagenet64  # noqa: E402

from benchbench.data.dataset import available_datasets, get_dataset  # noqa: E402
from benchbench.errors import BenchError, InvalidArgument, UnknownName  # noqa: E402


def test_cifar10_reads_the_pickle_batches_in_plane_order(tmp_path):
    write_cifar10(tmp_path)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    test = get_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.images.shape == (10, 3, 32, 32) and test.images.dtype == torch.float32
    # Row i of the file is 1024 R values, then G, then B, each row-major: pixel (c, y, x) = data[c*1024 + 32y + x].
    c, y, x = 2, 5, 7
    assert test.images[3, c, y, x].item() == pytest.approx(raw["data"][3, c * 1024 + 32 * y + x] / 255)
    assert test.labels.tolist() == raw["labels"]
    assert test.num_classes == 10
    assert test.meta["official"] is False and test.meta["classes"] == CIFAR_CLASSES


def test_cifar10_val_is_the_last_tenth_of_the_training_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=10)  # 50 training images
    train, val = get_dataset("cifar10", "train", data_dir=tmp_path), get_dataset("cifar10", "val", data_dir=tmp_path)
    assert len(train) == 45 and len(val) == 5
    last = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_5").read_bytes())
    assert val.labels.tolist() == last["labels"][5:]
    assert val.images[0, 0, 0, 0].item() == pytest.approx(last["data"][5, 0] / 255)


def test_cifar10_wrong_layout_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError, match="cifar-10-batches-py"):
        get_dataset("cifar10", "test", data_dir=tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(BenchError, match="python format"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


def test_imagenet64_reads_the_npz_with_one_based_labels(tmp_path):
    write_imagenet64(tmp_path, labels=[1, 1000, 17])
    npz = np.load(tmp_path / "Imagenet64_val_npz" / "val_data.npz")
    test = get_dataset("imagenet64", "test", data_dir=tmp_path)
    assert test.images.shape == (3, 3, 64, 64) and test.num_classes == 1000
    assert test.labels.tolist() == [0, 999, 16]
    c, y, x = 1, 63, 2
    assert test.images[2, c, y, x].item() == pytest.approx(npz["data"][2, c * 4096 + 64 * y + x] / 255)
    assert test.meta["label_order"].startswith("devkit")
    with pytest.raises(InvalidArgument, match="only the 50,000 validation"):
        get_dataset("imagenet64", "train", data_dir=tmp_path)


def test_imagenet64_map_clsloc_gives_sorted_wnid_labels(tmp_path):
    write_imagenet64(tmp_path, labels=[1, 2, 3])
    # devkit ids 1..1000 over wnids in a shuffled order; sorted order is n00000000 … n00000999.
    order = np.random.RandomState(1).permutation(1000)
    lines = [f"n{w:08d} {i + 1} name{i}" for i, w in enumerate(order)]
    (tmp_path / "Imagenet64_val_npz" / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    test = get_dataset("imagenet64", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [int(order[0]), int(order[1]), int(order[2])]
    assert test.meta["label_order"].startswith("sorted wnid")


def test_imagenet64_wrong_file_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError, match="Imagenet64_val_npz/val_data.npz"):
        get_dataset("imagenet64", "test", data_dir=tmp_path)
    (tmp_path / "Imagenet64_val_npz").mkdir()
    np.savez(tmp_path / "Imagenet64_val_npz" / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=[1, 2])
    with pytest.raises(BenchError, match="12288"):
        get_dataset("imagenet64", "test", data_dir=tmp_path)


def test_imagefolder_resizes_and_numbers_classes_by_sorted_folder(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("ant", (0, 0, 255))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (20, 12), colour).save(tmp_path / "imgs" / cls / "a.png")
    ds = get_dataset(f"imagefolder:{tmp_path / 'imgs'}:size=8", "test")
    assert ds.images.shape == (2, 3, 8, 8) and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 1]  # ant, cat
    assert ds.images[0, 2].mean().item() == pytest.approx(1.0) and ds.images[1, 0].mean().item() == pytest.approx(1.0)
    with pytest.raises(InvalidArgument, match="differ in size"):
        Image.new("RGB", (5, 5)).save(tmp_path / "imgs" / "cat" / "b.png")
        get_dataset(f"imagefolder:{tmp_path / 'imgs'}", "test")
    with pytest.raises(InvalidArgument, match="no 'train' split"):
        get_dataset(f"imagefolder:{tmp_path / 'imgs'}:size=8", "train")


def test_datasets_are_plugins_with_a_did_you_mean():
    assert {"digits", "cifar10", "imagenet64", "imagefolder"} <= set(available_datasets())
    with pytest.raises(UnknownName, match="did you mean 'cifar10'"):
        get_dataset("cifar01", "test")
    with pytest.raises(InvalidArgument, match="needs an argument"):
        get_dataset("imagefolder", "test")
