"""ImageNet at full resolution (the ILSVRC2012 validation set) and the resize-and-centre-crop that Cohen et
al. and Carlini et al. (DDS) certify on; image folders share the crop.

Two layouts under ``--data-dir`` (searched in ``DIR/imagenet`` first, then in ``DIR``):

* torchvision's ``ImageNet`` layout: ``meta.bin`` (written by torchvision from the devkit) beside
  ``val/<wnid>/*.JPEG``; read by ``torchvision.datasets.ImageNet``. Labels are the wnid's rank among all
  the wnids ``meta.bin`` lists (1,000), so a ``val/`` holding only some classes keeps the 1,000-class labels;
* a class-folder tree ``<wnid>/*.JPEG`` (or ``val/<wnid>/*.JPEG``, the layout of locuslab/smoothing and DDS),
  every folder named like a wnid (``n`` and 8 digits); read by ``torchvision.datasets.ImageFolder``. Labels
  are the rank of the folder among the tree's folders, so the classes are those folders: a tree missing
  classes has fewer classes than an ImageNet classifier has outputs, and the run refuses it.

Either way the labels are in sorted-wnid order, the order of torchvision, timm and transformers ImageNet-1k
classifiers, and images are decoded lazily (:class:`benchbench.data.dataset.LazyImages`): ``--skip 50``
decodes the 1,000 images it certifies, not 50,000.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from benchbench.data.dataset import ImageDataset, LazyImages, register_dataset
from benchbench.errors import BenchError, InvalidArgument, first_line

DEFAULT_SIZE = 256
WNID = re.compile(r"n\d{8}")
META_FILE = "meta.bin"  # torchvision.datasets.imagenet.META_FILE


def parse_options(text: str, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    """``size=256:resize=292`` → {"size": "256", "resize": "292"}; an unknown or repeated key, or a part
    that is not KEY=VALUE, is an InvalidArgument naming ``what`` and the keys allowed."""
    options: dict[str, str] = {}
    for part in filter(None, text.split(":")):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed or key in options:
            raise InvalidArgument(f"{what}: bad option {part!r} (options: {', '.join(k + '=...' for k in allowed)}, "
                                  f"each once, separated by ':')")
        options[key] = value
    return options


def positive_int(options: dict[str, str], key: str, what: str, default: int | None = None) -> int | None:
    """``options[key]`` as an integer ≥ 1 (``default`` when absent)."""
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise InvalidArgument(f"{what}: {key} must be an integer, got {options[key]!r}") from None
    if value < 1:
        raise InvalidArgument(f"{what}: {key} must be >= 1, got {value}")
    return value


def centre_crop(size: int, resize: int | None = None):
    """The torchvision transform of Cohen et al.'s and DDS's ImageNet test sets: shorter side to ``resize``
    (default ``size``; bilinear, antialiased), centre crop ``size`` × ``size``, to a float tensor in [0, 1]."""
    from torchvision import transforms

    resize = resize or size
    if resize < size:
        raise InvalidArgument(f"resize={resize} is smaller than the crop size={size}")
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor()])


def lazy_images(folder: Any, size: int, what: str) -> LazyImages:
    """The images of a torchvision folder dataset (already carrying its transform), decoded on indexing; a
    file that cannot be decoded is one error line naming it."""

    def decode(i: int) -> torch.Tensor:
        path = folder.samples[i][0]
        try:
            return folder[i][0]
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise BenchError(f"{what}: cannot decode {path}: {exc}") from None

    return LazyImages(len(folder), (3, size, size), decode)


def _find_root(data_dir: Path) -> tuple[str, Path]:
    """(layout, folder): ``torchvision`` with the root holding meta.bin and val/, or ``folders`` with the
    folder whose sub-folders are the wnids."""
    for base in (data_dir / "imagenet", data_dir):
        if (base / META_FILE).is_file() and (base / "val").is_dir():
            return "torchvision", base
        for tree in (base / "val", base):
            dirs = [d.name for d in tree.iterdir() if d.is_dir()] if tree.is_dir() else []
            if dirs and all(WNID.fullmatch(d) for d in dirs):
                return "folders", tree
    raise BenchError(f"imagenet: no ILSVRC2012 validation set under {data_dir}: expected torchvision's layout "
                     f"({META_FILE} beside val/<wnid>/*.JPEG) or class folders <wnid>/*.JPEG, in "
                     f"{data_dir / 'imagenet'} or {data_dir}")


@register_dataset("imagenet")
def load_imagenet(split: str, data_dir: str = "data", arg: str | None = None) -> ImageDataset:
    """The ILSVRC2012 validation set at full resolution as the ``test`` split (no ``train``/``val``), each
    image's shorter side resized to ``resize`` (default ``size``) and centre-cropped to ``size`` × ``size``
    (default 256): ``imagenet:size=224:resize=256`` is the test set of locuslab/smoothing's and DDS's code.

    Labels in sorted-wnid order (see the module docstring for the layouts); images decoded lazily.
    ``meta`` records the layout, the crop and the label order.
    """
    if split != "test":
        raise InvalidArgument(f"imagenet holds the 50,000 validation images (the test split); no {split!r} split")
    options = parse_options(arg or "", ("size", "resize"), "imagenet")
    size = positive_int(options, "size", "imagenet", DEFAULT_SIZE)
    resize = positive_int(options, "resize", "imagenet", size)
    transform = centre_crop(size, resize)
    layout, root = _find_root(Path(data_dir))
    from torchvision.datasets import ImageFolder, ImageNet

    try:
        if layout == "torchvision":
            folder = ImageNet(str(root), split="val", transform=transform)
            # Rank among every wnid meta.bin lists, not among the folders present: a partial val/ keeps
            # the 1,000-class numbering the classifiers use.
            wnids = sorted(torch.load(root / META_FILE, weights_only=True)[0])
            rank = {w: i for i, w in enumerate(wnids)}
            missing = [w for w in folder.wnids if w not in rank]
            if missing:
                raise BenchError(f"imagenet: {root / 'val' / missing[0]} is not a class of {root / META_FILE}")
            labels = [rank[folder.wnids[t]] for t in folder.targets]
            source = root / "val"
        else:
            folder = ImageFolder(str(root), transform=transform)
            wnids, labels, source = folder.classes, list(folder.targets), root
    except (RuntimeError, FileNotFoundError, OSError) as exc:  # a corrupt meta.bin, an empty class folder
        raise BenchError(f"imagenet: {root}: {first_line(exc)}") from None
    meta = {"source": str(source.resolve()), "layout": layout, "label_order": "sorted wnid",
            "size": size, "resize": resize, "crop": "center"}
    return ImageDataset("imagenet", split, lazy_images(folder, size, "imagenet"),
                        torch.tensor(labels, dtype=torch.int64), len(wnids), meta)
