"""The one way benchbench finds and loads a model.

A model reference is one of:

* an embedded name (``digits``): a model trained by benchbench and shipped in ``benchbench/assets``;
* a local directory in diffusers' ``save_pretrained`` layout (``./models/my-ddpm``, ``/abs/path``);
* a Hugging Face hub id (``google/ddpm-cifar10-32``), optionally pinned to a revision
  (``google/ddpm-cifar10-32@6be910c``), fetched by diffusers or transformers into the hub cache; offline
  this fails with one clear :class:`~benchbench.errors.CheckpointError`, never silently. The commit a hub
  model resolved to is part of its fingerprint (``hub:ID@COMMIT``), recorded in the run's config.json.

A DDPM is a ``DDPMPipeline`` folder: ``unet/`` (``UNet2DModel``) and ``scheduler/`` (``DDPMScheduler``).
A SmallCNN classifier is a folder holding a :class:`~benchbench.models.classifier.SmallCNN` with ``config.json``
beside the safetensors weights; every other classifier reference (``hf:…``, ``timm:…``, ``robustbench:…``,
``torchscript:…``) is built by :func:`benchbench.models.classifiers.load_classifier` with this module's
resolution, hub access and fingerprints (that module imports this one, never the reverse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import math
import re
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from benchbench.errors import CheckpointError, first_line

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MANIFEST = "manifest.json"
# What a converted folder computes beyond its diffusers configs (written by `bench convert openai-unet`).
CONVERSION = "conversion.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def embedded_path(name: str, kind: str) -> Path:
    """Where the embedded model ``name`` of ``kind`` (``classifier``, ``ddpm``, …) lives in the package."""
    return ASSETS / name / kind


def resolve(ref: str, kind: str) -> str:
    """Turn a model reference into a local path or a hub id (``@revision`` kept); raise CheckpointError
    when it is neither."""
    if embedded_path(ref, kind).is_dir():
        return str(embedded_path(ref, kind))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{kind} checkpoint {ref!r} is a file; expected a save_pretrained folder")
        return str(path)
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        embedded = sorted(p.parent.name for p in ASSETS.glob(f"*/{kind}") if p.is_dir())
        raise CheckpointError(
            f"{kind} checkpoint {ref!r} not found: not a directory, not an embedded model "
            f"({', '.join(embedded) or 'none'}), not a hub id"
        )
    return ref


def split_revision(hub_id: str) -> tuple[str, str | None]:
    """``org/name@rev`` → (``org/name``, ``rev``); ``org/name`` → (``org/name``, None)."""
    repo, sep, rev = hub_id.partition("@")
    return (repo, rev) if sep else (hub_id, None)


def _quiet() -> None:
    """Silence the libraries' warnings and retry messages ("install accelerate", "Retrying in 1s"), which
    would break one-line errors."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging

    diffusers_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars on stderr around one-line errors


def hub_call(fn: Any, ref: str, kind: str, **kwargs: Any) -> Any:
    """Call a ``from_pretrained``-like ``fn(path_or_id, **kwargs)`` on the resolved reference (a hub id's
    ``@revision`` passed as ``revision=``), turning every failure into one CheckpointError line."""
    _quiet()
    where = resolve(ref, kind)
    is_hub = not Path(where).exists()
    if is_hub:
        where, revision = split_revision(where)
        if revision:
            kwargs["revision"] = revision
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    try:
        # diffusers logs a missing weights file at ERROR before it raises: one more line than the one we print
        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(where, **kwargs)
    except Exception as exc:  # the libraries raise OSError, ValueError, EnvironmentError, safetensors errors…
        if is_hub:
            raise CheckpointError(
                f"cannot fetch {kind} {ref!r} from the hub (no network, or no such repo): {first_line(exc)}"
            ) from exc
        raise CheckpointError(f"corrupt or incomplete {kind} checkpoint at {where}: {first_line(exc)}") from exc
    finally:
        diffusers_logging.set_verbosity(level)


def _load(loader: Any, ref: str, kind: str, **kwargs: Any) -> Any:
    """Call a diffusers ``from_pretrained`` and turn every failure into one CheckpointError line."""
    return hub_call(loader.from_pretrained, ref, kind, **kwargs)


def load_smallcnn(ref: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a SmallCNN folder or embedded name (images in [0, 1] → logits) in eval mode on ``device``."""
    from benchbench.models.classifier import SmallCNN

    return _load(SmallCNN, ref, "classifier").to(device).eval()


def noise_classifier_ref(dataset: str, sigma: float) -> str | None:
    """The embedded classifier of ``dataset`` trained under Gaussian noise σ (``classifier-noise-<σ>``,
    Cohen et al.'s baseline), as a folder path; None when none ships for that σ."""
    path = ASSETS / dataset / f"classifier-noise-{sigma:g}"
    return str(path) if path.is_dir() else None


def load_feature_net(ref: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a perceptual feature network (:class:`~benchbench.models.feature_net.FeatureNet`, kind
    ``perceptual``) in eval mode on ``device``."""
    from benchbench.models.feature_net import FeatureNet

    return _load(FeatureNet, ref, "perceptual").to(device).eval()


class RescaledTimesteps(torch.nn.Module):
    """A UNet2DModel fed ``timestep · scale``, as the original code fed it (improved-diffusion's
    ``rescale_timesteps``: t·1000/T); a diffusers config has no field for it, so a converted folder's
    ``conversion.json`` holds it. Same call and ``config`` as the UNet it wraps."""

    def __init__(self, unet: torch.nn.Module, scale: float):
        super().__init__()
        self.unet = unet
        self.timestep_scale = scale

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor | None = None,
                return_dict: bool = True) -> Any:
        t = torch.as_tensor(timestep, device=sample.device).float() * self.timestep_scale
        return self.unet(sample, t, class_labels=class_labels, return_dict=return_dict)


def unet_class(ref: str, kind: str) -> type:
    """The network class of a pipeline folder or hub id, from ``unet/config.json``'s ``_class_name``:
    :class:`~benchbench.models.ncsnpp.NCSNppModel` for a converted NCSN++ (``bench convert ncsnpp-flax``),
    diffusers' ``UNet2DModel`` otherwise."""
    from diffusers import UNet2DModel

    from benchbench.models.ncsnpp import NCSNppModel

    config = hub_call(UNet2DModel.load_config, ref, kind, subfolder="unet")
    return NCSNppModel if config.get("_class_name") == NCSNppModel.__name__ else UNet2DModel


def load_unet(ref: str, kind: str) -> torch.nn.Module:
    """The ``unet/`` of a pipeline folder or hub id, computing what its original computed: wrapped in
    :class:`RescaledTimesteps`, and its attentions given their original head counts, when the folder's
    ``conversion.json`` (``bench convert``) says so."""
    unet = _load(unet_class(ref, kind), ref, kind, subfolder="unet")
    where = Path(resolve(ref, kind))
    if not where.is_dir():
        return unet
    record = conversion_record(where)
    set_attention_heads(unet, attention_heads(record, where))
    scale = timestep_scale(record, where)
    return unet if scale == 1.0 else RescaledTimesteps(unet, scale)


def load_ddpm(ref: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a DDPM pipeline folder or hub id; returns (UNet2DModel in eval mode, DDPMScheduler). A folder
    converted from another codebase keeps feeding the network its original timestep (:func:`load_unet`)."""
    from diffusers import DDPMScheduler

    unet = load_unet(ref, "ddpm").to(device).eval()
    scheduler = _load(DDPMScheduler, ref, "ddpm", subfolder="scheduler")
    return unet, scheduler


def hub_revision(repo: str, revision: str | None = None) -> str | None:
    """The commit that ``repo`` (at ``revision``; default its main branch) resolves to in the local hub
    cache, where loading it put it; None when it is not cached."""
    from huggingface_hub import snapshot_download

    _quiet()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Path(snapshot_download(repo, revision=revision, local_files_only=True)).name
    except Exception:  # not in the cache: huggingface_hub raises one of several error types
        return None


def file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes (hex), read in 1 MiB blocks so large checkpoints are not held in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write a model into: renamed to ``out`` when the block succeeds,
    removed when it fails, so a conversion never leaves a half-written folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fingerprint(ref: str, kind: str) -> str:
    """A content hash that changes whenever the weights or configs change: ``sha256:…`` over every file of
    a local folder except the manifest, or ``hub:<id>@<commit>`` for a hub id, the commit it resolved to in
    the hub cache (``@unknown`` when it is not cached)."""
    where = resolve(ref, kind)
    root = Path(where)
    if not root.exists():
        repo, revision = split_revision(where)
        return f"hub:{repo}@{hub_revision(repo, revision) or 'unknown'}"
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return "sha256:" + digest.hexdigest()


def read_manifest(ref: str, kind: str) -> dict[str, Any] | None:
    """The training manifest shipped with a local model, or None."""
    where = resolve(ref, kind)
    path = Path(where) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def conversion_record(folder: str | Path) -> dict[str, Any]:
    """A converted folder's ``conversion.json`` (``bench convert``) as a dict; {} when the folder has none."""
    path = Path(folder) / CONVERSION
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"corrupt {path}: {first_line(exc)}") from exc
    if not isinstance(record, dict):
        raise CheckpointError(f"corrupt {path}: expected a JSON object, got {type(record).__name__}")
    return record


def timestep_scale(record: dict[str, Any], folder: str | Path) -> float:
    """The factor a converted folder's network takes its timestep with, from its :func:`conversion_record`
    (1 when it records none)."""
    path = Path(folder) / CONVERSION
    try:
        scale = float(record.get("timestep_scale", 1.0))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"corrupt {path}: {first_line(exc)}") from exc
    if not math.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{path}: timestep_scale must be a positive number, got {scale}")
    return scale


def attention_heads(record: dict[str, Any], folder: str | Path) -> dict[str, int]:
    """Per-attention head counts a converted folder's UNet needs beyond its config, from its
    :func:`conversion_record` (empty when none)."""
    heads = record.get("attention_heads") or {}
    if not isinstance(heads, dict) or not all(isinstance(v, int) and v > 0 for v in heads.values()):
        raise CheckpointError(f"corrupt {Path(folder) / CONVERSION}: attention_heads must map module names to "
                              f"head counts")
    return heads


def set_attention_heads(unet: torch.nn.Module, heads: dict[str, int]) -> None:
    """Give each named attention of ``unet`` its original number of heads (same weights, same width)."""
    for name, count in heads.items():
        try:
            attention = unet.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(f"conversion record names attention {name!r}, which this UNet lacks") from exc
        width = attention.to_q.out_features
        if width % count:
            raise CheckpointError(f"conversion record: {count} heads do not divide {name!r}'s {width} channels")
        attention.heads, attention.scale = count, (width // count) ** -0.5
