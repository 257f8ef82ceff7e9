"""The built-in real-world datasets: CIFAR-10, downsampled ImageNet 64×64, and any image folder.

They are declared in benchbench's pyproject.toml under the entry-point group ``benchbench.datasets``, the
same way a third-party package adds one. Every loader returns images in [0, 1], shape (N, C, H, W).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from benchbench.data.dataset import ImageDataset, register_dataset
from benchbench.data.imagenet import centre_crop, parse_options, positive_int
from benchbench.errors import BenchError, InvalidArgument

# The paper's CIFAR-10 models (see the README for what was checked about each).
CIFAR10_CLASSIFIER = "hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10"
CIFAR10_DDPM = "google/ddpm-cifar10-32"
IMAGENET64_CONSISTENCY = "openai/diffusers-cd_imagenet64_lpips"

CIFAR10_VAL_FRACTION = 0.1  # the last 10% of the 50,000 training images (5,000) are `val`


def _cifar10_reader():
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    class CIFAR10Format(CIFAR10):
        """torchvision's CIFAR10 reader, accepting any files in the python-pickle format: torchvision
        refuses files whose md5 is not the release's (a test's fixture, a re-pickled copy); whether they
        are the release is reported by :meth:`official` instead."""

        def _files(self) -> list[tuple[str, str]]:
            return [*self.train_list, *self.test_list, (self.meta["filename"], self.meta["md5"])]

        def _check_integrity(self) -> bool:
            return all(check_integrity(os.path.join(self.root, self.base_folder, f)) for f, _ in self._files())

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        def official(self) -> bool:
            return all(check_integrity(os.path.join(self.root, self.base_folder, f), md5) for f, md5 in self._files())

    return CIFAR10Format


@register_dataset("cifar10", default_classifier=CIFAR10_CLASSIFIER, default_ddpm=CIFAR10_DDPM)
def load_cifar10(split: str, data_dir: str = "data", download: bool = False) -> ImageDataset:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py/`` (torchvision's layout; ``download`` fetches it there).

    ``test``: the 10,000 test images. ``val``: the last 10% of the 50,000 training images (5,000), fixed;
    ``train``: the rest. ``meta.official`` says whether every file has the release's md5.
    """
    reader = _cifar10_reader()
    folder = Path(data_dir) / reader.base_folder
    try:
        ds = reader(data_dir, train=split != "test", download=download)
    except RuntimeError:
        raise BenchError(f"cifar10: {folder} does not hold the python-pickle batches (data_batch_1..5, "
                         f"test_batch, batches.meta); pass --data-dir DIR holding cifar-10-batches-py/, or "
                         f"--download when online") from None
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise BenchError(f"cifar10: {folder} is not in the CIFAR-10 python format ({type(exc).__name__}: {exc})") \
            from None
    except OSError as exc:  # download asked for with no network
        raise BenchError(f"cifar10: cannot download to {folder}: {exc}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div(255)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    if split != "test":
        cut = len(labels) - int(round(len(labels) * CIFAR10_VAL_FRACTION))
        part = slice(cut, None) if split == "val" else slice(None, cut)
        images, labels = images[part], labels[part]
    meta = {"source": str(folder.resolve()), "official": ds.official(), "classes": list(ds.classes)}
    return ImageDataset("cifar10", split, images.contiguous(), labels, 10, meta)


IMAGENET64_FILE = "val_data.npz"
IMAGENET64_FOLDER = "Imagenet64_val_npz"
CLASS_MAP_FILE = "map_clsloc.txt"


def _imagenet64_file(root: Path) -> Path:
    for candidate in (root / IMAGENET64_FOLDER / IMAGENET64_FILE, root / IMAGENET64_FILE, root):
        if candidate.is_file():
            return candidate
    raise BenchError(f"imagenet64: no {IMAGENET64_FOLDER}/{IMAGENET64_FILE} under {root}; unzip the official "
                     f"Imagenet64_val_npz.zip into --data-dir")


def _wnid_order(path: Path) -> np.ndarray:
    """From a ``map_clsloc.txt`` (``wnid id name`` per line, ids 1…1000 in the ILSVRC devkit's order), the
    table taking a 0-based devkit id to the index of its wnid in sorted order, the order torchvision,
    timm and transformers ImageNet-1k classifiers use."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        ids = {int(r[1]) - 1: r[0] for r in rows}
    except (IndexError, ValueError):
        raise BenchError(f"imagenet64: {path} is not a map_clsloc.txt ('wnid id name' per line)") from None
    if sorted(ids) != list(range(1000)):
        raise BenchError(f"imagenet64: {path} must list the ids 1…1000 once each")
    rank = {w: i for i, w in enumerate(sorted(ids.values()))}
    return np.array([rank[ids[i]] for i in range(1000)], dtype=np.int64)


# meta["label_order"] values. Every ImageNet model benchbench loads (torchvision, timm and transformers
# classifiers; openai's class-conditional diffusion and consistency models) numbers classes by sorted wnid.
SORTED_WNID_ORDER = "sorted wnid (torchvision/timm/transformers)"
DEVKIT_ORDER = "devkit (file order)"
DEVKIT_DECLARED = "devkit (declared with labels=devkit)"


def _imagenet64_order(arg: str | None) -> bool:
    """True when ``imagenet64:labels=devkit`` declares that the run's models number classes in the devkit's
    order (e.g. a classifier trained on the Imagenet64 npz files themselves)."""
    if arg is None:
        return False
    if arg != "labels=devkit":
        raise InvalidArgument(f"imagenet64 takes one option, labels=devkit (got {arg!r})")
    return True


def devkit_order_refusal(dataset: ImageDataset) -> str | None:
    """The one-line refusal for a run whose ImageNet classifier or class-conditional model would be scored
    against devkit-order labels (``imagenet64`` without ``map_clsloc.txt``): every label would be wrong,
    silently. None when the labels are in sorted-wnid order or the devkit order was declared."""
    if dataset.meta.get("label_order") != DEVKIT_ORDER:
        return None
    where = Path(dataset.meta.get("source", IMAGENET64_FILE)).parent
    return (f"{dataset.name}: labels are in the ILSVRC devkit order of {IMAGENET64_FILE}, but ImageNet classifiers "
            f"and class-conditional models number classes by sorted wnid, so every label would be wrong: put the "
            f"devkit's {CLASS_MAP_FILE} in {where} (or --data-dir), or pass --dataset imagenet64:labels=devkit if "
            f"your classifier and models were trained in devkit order")


@register_dataset("imagenet64", default_consistency=IMAGENET64_CONSISTENCY)
def load_imagenet64(split: str, data_dir: str = "data", arg: str | None = None) -> ImageDataset:
    """The official downsampled ImageNet 64×64 validation set (Chrabaszcz et al. 2017) as the ``test``
    split: ``data_dir/Imagenet64_val_npz/val_data.npz`` with ``data`` (N, 12288) uint8, each row the R, G
    and B planes of a 64×64 image in turn, and ``labels`` 1…1000.

    Labels become 0-based in the file's class order (the ILSVRC devkit's); when ``map_clsloc.txt`` lies
    beside the npz (or in ``data_dir``) they are mapped to sorted-wnid order, the order of torchvision,
    timm and transformers ImageNet classifiers. ``meta.label_order`` records which; a run refuses devkit
    order (:func:`devkit_order_refusal`) unless ``arg`` is ``labels=devkit``. Only the validation set is
    read: ``train`` and ``val`` are errors.
    """
    declared = _imagenet64_order(arg)
    if split != "test":
        raise InvalidArgument(f"imagenet64 holds only the 50,000 validation images (the test split); no {split!r} "
                              f"split (train on the full Imagenet64_train files elsewhere)")
    root = Path(data_dir)
    path = _imagenet64_file(root)  # read with numpy: torchvision has no reader for the downsampled-ImageNet npz
    try:
        with np.load(path) as npz:
            data, raw = npz["data"], np.asarray(npz["labels"]).reshape(-1)
    except (KeyError, ValueError, OSError) as exc:
        raise BenchError(f"imagenet64: {path} is not an Imagenet64 npz with 'data' and 'labels' ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or len(data) != len(raw):
        raise BenchError(f"imagenet64: {path} holds data of shape {data.shape} and {len(raw)} labels; expected "
                         f"(N, 12288) and N labels")
    if raw.min() < 1 or raw.max() > 1000:
        raise BenchError(f"imagenet64: labels in {path} must be 1…1000 (got {raw.min()}…{raw.max()})")
    labels = raw.astype(np.int64) - 1
    order = DEVKIT_DECLARED if declared else DEVKIT_ORDER
    for mapping in () if declared else (path.parent / CLASS_MAP_FILE, root / CLASS_MAP_FILE):
        if mapping.is_file():
            labels, order = _wnid_order(mapping)[labels], SORTED_WNID_ORDER
            break
    images = torch.from_numpy(data.reshape(-1, 3, 64, 64)).float().div(255)
    meta = {"source": str(path.resolve()), "label_order": order}
    return ImageDataset("imagenet64", split, images, torch.from_numpy(labels), 1000, meta)


IMAGEFOLDER_OPTIONS = ("size", "crop", "resize")


def _imagefolder_options(arg: str) -> tuple[str, dict[str, str]]:
    """``PATH:size=N:crop=center`` → (``PATH``, options): the trailing ``size=``, ``crop=`` and ``resize=``
    parts are options (a PATH may itself hold ':')."""
    parts = arg.split(":")
    cut = len(parts)
    while cut > 1 and parts[cut - 1].partition("=")[0] in IMAGEFOLDER_OPTIONS:
        cut -= 1
    return ":".join(parts[:cut]), parse_options(":".join(parts[cut:]), IMAGEFOLDER_OPTIONS, "imagefolder")


@register_dataset("imagefolder")
def load_imagefolder(split: str, arg: str) -> ImageDataset:
    """``imagefolder:PATH[:size=N][:crop=center[:resize=M]]``: one sub-folder per class (sorted names are
    classes 0, 1, …), read by torchvision's ``ImageFolder``, RGB. ``size=N`` resizes to N×N (bilinear;
    default: the images' own size, which must then be the same for all); with ``crop=center`` the shorter
    side goes to M (default N) and the centre N×N is cut out instead, keeping the aspect ratio (as the
    ``imagenet`` dataset does). PATH/train, PATH/val, PATH/test are the splits when they exist; otherwise
    PATH itself is the test split.
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    path, options = _imagefolder_options(arg)
    size = positive_int(options, "size", "imagefolder")
    crop = options.get("crop")
    if crop not in (None, "center"):
        raise InvalidArgument(f"imagefolder: crop must be 'center', got {crop!r}")
    if crop and size is None:
        raise InvalidArgument("imagefolder: crop=center needs size=N")
    if "resize" in options and not crop:
        raise InvalidArgument("imagefolder: resize=M goes with crop=center (the shorter side before the crop)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BenchError(f"imagefolder: {root} is not a directory")
    has_splits = any((root / s).is_dir() for s in ("train", "val", "test"))
    folder = root / split if has_splits else root
    if not folder.is_dir() or (not has_splits and split != "test"):
        raise InvalidArgument(f"imagefolder: no {split!r} split in {root} (sub-folders train/val/test, or class "
                              f"folders directly for a test split only)")
    if crop:
        transform = centre_crop(size, positive_int(options, "resize", "imagefolder", size))
    else:
        transform = transforms.Compose(([transforms.Resize((size, size))] if size else []) + [transforms.ToTensor()])
    try:
        ds = ImageFolder(str(folder), transform=transform)  # its loader converts to RGB
    except (FileNotFoundError, OSError) as exc:
        raise BenchError(f"imagefolder: {folder}: {exc}") from None
    items = [ds[i] for i in range(len(ds))]
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        raise InvalidArgument(f"imagefolder: images in {folder} differ in size ({len(shapes)} sizes); add :size=N")
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([y for _, y in items], dtype=torch.int64)
    meta = {"source": str(folder.resolve()), "classes": ds.classes, "size": size,
            **({"crop": crop, "resize": positive_int(options, "resize", "imagefolder", size)} if crop else {})}
    return ImageDataset(f"imagefolder:{arg}", split, images, labels, len(ds.classes), meta)
