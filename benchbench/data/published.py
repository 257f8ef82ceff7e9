"""The built-in real-world datasets: CIFAR-10, downsampled ImageNet 64×64, and any image folder.

They are declared in benchbench's pyproject.toml under the entry-point group ``benchbench.datasets``, the
same way a third-party package adds one. Every loader returns images in [0, 1], shape (N, C, H, W).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchbench.data.dataset import ImageDataset, register_dataset
from benchbench.data.imagenet import centre_crop, parse_options, positive_int
from benchbench.errors import BenchError, InvalidArgument, first_line

# The paper's CIFAR-10 models (see the README for what was checked about each).
CIFAR10_CLASSIFIER = "hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10"
CIFAR10_DDPM = "google/ddpm-cifar10-32"
IMAGENET64_CONSISTENCY = "openai/diffusers-cd_imagenet64_lpips"

CIFAR10_VAL_FRACTION = 0.1  # the last 10% of the 50,000 training images (5,000) are `val`


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 python batch admitting only what the release's pickles reference: numpy's array
    reconstruction (``_reconstruct`` for the release's protocol-2 pickles, ``_frombuffer`` for protocol 5),
    ``ndarray``, a uint8 ``dtype``, and ``_codecs.encode`` (bytes in protocol-2 pickles written by Python 3).
    dict, list, str, bytes and int need no global. Anything else (``os.system``, ``builtins.open``, …) is
    refused before it runs: a data file must never execute code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("numpy", "dtype"):
            return _uint8_dtype
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, which the CIFAR-10 release never does")


def _uint8_dtype(spec: object, align: bool = False, copy: bool = False) -> np.dtype:
    # The release's arrays are uint8; an object or other dtype would let a file smuggle in other values.
    if spec not in ("u1", "|u1", "uint8"):
        raise pickle.UnpicklingError(f"it holds an array of dtype {spec!r}; the release holds uint8 only")
    return np.dtype("u1", align, copy)


def _load_pickle(path: Path) -> object:
    """One CIFAR-10 pickle read with :class:`_CifarUnpickler`; a file it refuses is one BenchError line."""
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError) as exc:
        raise BenchError(f"cifar10: {path} is not in the CIFAR-10 python format ({type(exc).__name__}: "
                         f"{first_line(exc)}); replace it with the release's file") from None
    except OSError as exc:
        raise BenchError(f"cifar10: cannot read {path}: {exc.strerror or exc}") from None


def _read_batch(path: Path, classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """``data`` (N, 3072) uint8 and ``labels`` (N ints in 0…classes−1) of one batch file, every field
    checked: a label outside the classes would be certified as if it were one."""
    entry = _load_pickle(path)
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels") if isinstance(entry, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise BenchError(f"cifar10: {path} holds no 'data' array of shape (N, 3072) uint8; replace it with the "
                         f"release's file")
    if not (isinstance(labels, list) and len(labels) == len(data)
            and all(type(v) is int for v in labels)):  # noqa: E721 (bool is no label)
        raise BenchError(f"cifar10: {path} holds no list of {len(data)} integer 'labels'; replace it with the "
                         f"release's file")
    bad = next((i for i, v in enumerate(labels) if not 0 <= v < classes), None)
    if bad is not None:
        raise BenchError(f"cifar10: {path} row {bad} has label {labels[bad]}, not a class (0…{classes - 1}); "
                         f"replace it with the release's file")
    return data, labels


def _cifar10_files() -> Any:
    # torchvision's CIFAR10 knows the release's file names, md5s and download URL; its reader unpickles
    # the files as they are, so benchbench reads them itself (:class:`_CifarUnpickler`).
    from torchvision.datasets import CIFAR10

    return CIFAR10


def _read_cifar10(root: Path, train: bool, download: bool) -> tuple[np.ndarray, list[int], list[str], bool]:
    """(images (N, 3, 32, 32) uint8, labels, class names, whether every file has the release's md5) from
    ``root/cifar-10-batches-py``; ``download`` fetches and unpacks the release there first."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    ref = _cifar10_files()
    folder = root / ref.base_folder
    every = [*ref.train_list, *ref.test_list, (ref.meta["filename"], ref.meta["md5"])]
    if download and not all((folder / f).is_file() for f, _ in every):
        download_and_extract_archive(ref.url, str(root), filename=ref.filename, md5=ref.tgz_md5)
    if not all((folder / f).is_file() for f, _ in every):
        raise FileNotFoundError(folder)
    data, labels = [], []
    for name, _ in ref.train_list if train else ref.test_list:
        d, lab = _read_batch(folder / name)
        data.append(d)
        labels.extend(lab)
    meta = _load_pickle(folder / ref.meta["filename"])
    names = meta.get(ref.meta["key"]) if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == 10 and all(isinstance(n, str) for n in names)):
        raise BenchError(f"cifar10: {folder / ref.meta['filename']} holds no list of 10 class names "
                         f"({ref.meta['key']!r}); replace it with the release's file")
    official = all(check_integrity(str(folder / f), md5) for f, md5 in every)
    return np.vstack(data).reshape(-1, 3, 32, 32), labels, names, official


@register_dataset("cifar10", default_classifier=CIFAR10_CLASSIFIER, default_ddpm=CIFAR10_DDPM)
def load_cifar10(split: str, data_dir: str = "data", download: bool = False) -> ImageDataset:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py/`` (the release's layout; ``download`` fetches it there).

    ``test``: the 10,000 test images. ``val``: the last 10% of the 50,000 training images (5,000), fixed;
    ``train``: the rest. ``meta.official`` says whether every file has the release's md5. The pickles are
    read with an unpickler that admits only the release's types, and every label must be 0…9: a file that
    fails is one BenchError line.
    """
    folder = Path(data_dir) / _cifar10_files().base_folder
    try:
        data, targets, classes, official = _read_cifar10(Path(data_dir), split != "test", download)
    except FileNotFoundError:
        raise BenchError(f"cifar10: {folder} does not hold the python-pickle batches (data_batch_1..5, "
                         f"test_batch, batches.meta); pass --data-dir DIR holding cifar-10-batches-py/, or "
                         f"--download when online") from None
    except (OSError, RuntimeError) as exc:  # download asked for with no network, or a bad archive
        raise BenchError(f"cifar10: cannot download to {folder}: {first_line(exc)}") from None
    images = torch.from_numpy(data).float().div(255)
    labels = torch.as_tensor(targets, dtype=torch.int64)
    if split != "test":
        cut = len(labels) - int(round(len(labels) * CIFAR10_VAL_FRACTION))
        part = slice(cut, None) if split == "val" else slice(None, cut)
        images, labels = images[part], labels[part]
    meta = {"source": str(folder.resolve()), "official": official, "classes": list(classes)}
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
    except (KeyError, ValueError, OSError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        raise BenchError(f"imagenet64: {path} is not an Imagenet64 npz with 'data' and 'labels' "
                         f"({first_line(exc)})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or len(data) != len(raw):
        raise BenchError(f"imagenet64: {path} holds data of shape {data.shape} and {len(raw)} labels; expected "
                         f"(N, 12288) and N labels")
    if len(data) == 0:
        raise BenchError(f"imagenet64: {path} holds no images; unzip the official Imagenet64_val_npz.zip into "
                         f"--data-dir")
    # The release is uint8 0…255; floats (already in [0, 1], or 0…255 as float) have no single safe reading,
    # so they are refused rather than guessed at.
    if data.dtype != np.uint8:
        raise BenchError(f"imagenet64: {path} holds data of dtype {data.dtype}; the official npz holds uint8 "
                         f"0…255 (store the pixels 0…255 as uint8, or use the release's file)")
    if not np.issubdtype(raw.dtype, np.integer):
        raise BenchError(f"imagenet64: labels in {path} are of dtype {raw.dtype}; expected integers 1…1000")
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
    items = []
    for i, (file, _) in enumerate(ds.samples):
        try:
            items.append(ds[i])
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated or corrupt files, bad headers
            raise BenchError(f"imagefolder: cannot read {file}: {first_line(exc)}; replace or remove that "
                             f"file") from None
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        raise InvalidArgument(f"imagefolder: images in {folder} differ in size ({len(shapes)} sizes); add :size=N")
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([y for _, y in items], dtype=torch.int64)
    meta = {"source": str(folder.resolve()), "classes": ds.classes, "size": size,
            **({"crop": crop, "resize": positive_int(options, "resize", "imagefolder", size)} if crop else {})}
    return ImageDataset(f"imagefolder:{arg}", split, images, labels, len(ds.classes), meta)
