"""``bench convert ncsnpp-flax``: openai's ``consistency_models_cifar10`` checkpoints (flax) → a folder the
``consistency`` purifier loads.

The checkpoint is what that repo's ``checkpoints.save_checkpoint`` writes: ``flax.serialization.to_bytes`` of
its training state (``step``, ``lr``, ``ema_rate``, ``params``, ``params_ema``, ``model_state``, ``opt_state``,
``rng_state``; CT runs add ``target_params``), msgpack with each array as an extension (shape, dtype name,
bytes). Sampling uses ``params_ema`` (sampling.get_onestep_sampler), so that is what is converted.

The consistency function is that repo's ``models/utils.get_distiller_fn`` with ``pred_t = t_min``:
f(x, σ) = c_skip(σ)·x + c_out(σ)·F(x/√(σ² + σ_d²), 0.25·ln σ), c_skip = σ_d²/((σ − σ_min)² + σ_d²),
c_out = (σ − σ_min)·σ_d/√(σ² + σ_d²), σ_d = 0.5, σ_min = 0.002: exactly diffusers'
``CMStochasticIterativeScheduler`` scalings, which :class:`~benchbench.models.consistency.ConsistencyModel`
uses. F is :class:`~benchbench.models.ncsnpp.NCSNppModel`. The folder is a ``ConsistencyModelPipeline``
layout: ``unet/`` (NCSNppModel), ``scheduler/`` (the σ grid: ``num_scales`` Karras levels from ``t_max`` to
``t_min``, ρ = 7), ``model_index.json``, and ``manifest.json`` naming the source file and the flags.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from benchbench.errors import CheckpointError, InvalidArgument, first_line
from benchbench.models.store import file_sha256, new_folder

# configs/cifar10_ve_cd.py and cifar10_ve_ct_*.py (model.*) and the KVESDE they sample with.
FLAGS: dict[str, Any] = {
    "nf": 128, "ch_mult": (2, 2, 2), "num_res_blocks": 4, "attn_resolutions": (16,), "image_size": 32,
    "num_channels": 3, "t_min": 0.002, "t_max": 80.0, "data_std": 0.5, "rho": 7.0, "num_scales": 18,
    "weights": "params_ema",
}
# Settings this converter represents exactly; the configs' values, and the only ones accepted.
FIXED: dict[str, Any] = {
    "name": "ncsnpp", "resblock_type": "biggan", "progressive": "none", "progressive_input": "residual",
    "progressive_combine": "sum", "skip_rescale": True, "fir": True, "fir_kernel": (1, 3, 3, 1),
    "embedding_type": "fourier", "attention_type": "ddpm", "double_heads": False, "conditional": True,
    "nonlinearity": "swish", "normalization": "GroupNorm", "resamp_with_conv": True,
}
WEIGHTS = ("params_ema", "params")
# Which flag shapes which part of the tree, for the one-line mismatch message.
HINTS = {"GaussianFourierProjection": "nf", "Dense": "nf", "Conv_0": "num_channels, nf",
         "ResnetBlockBigGANpp": "nf, ch_mult, num_res_blocks", "AttnBlockpp": "attn_resolutions, image_size",
         "Downsample": "ch_mult, num_channels", "GroupNorm": "nf, ch_mult", "Conv_1": "num_channels, nf, ch_mult"}


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (the configs' own names) → the full flag set: :data:`FLAGS` overridden.

    Values are Python literals (``2,2,2`` and ``(16,)`` are tuples; ``true``/``false`` booleans). A key
    of :data:`FIXED` is accepted only with its fixed value. Raises InvalidArgument with one line."""
    flags = dict(FLAGS)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(f"--set {pair!r}: expected KEY=VALUE")
        value = _literal(text.strip())
        if key in FIXED:
            want = FIXED[key]
            if _norm(value) != _norm(want):
                raise InvalidArgument(f"--set {key}={text}: only {key}={_show(want)} is supported (the CIFAR-10 "
                                      f"consistency models' NCSN++, which this converter reproduces exactly)")
            continue
        if key not in FLAGS:
            close = difflib.get_close_matches(key, [*FLAGS, *FIXED], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(FLAGS)})"
            raise InvalidArgument(f"--set {key}: unknown flag{hint}")
        flags[key] = _check_value(key, value, text)
    return flags


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) \
        else str(value)


def _check_value(key: str, value: Any, text: str) -> Any:
    bad = InvalidArgument(f"--set {key}={text}: expected {_kind(key)}")
    if key in ("ch_mult", "attn_resolutions"):
        value = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v > 0 for v in value) \
                or (key == "ch_mult" and not value):
            raise bad
        return tuple(value)
    if key == "weights":
        if value not in WEIGHTS:
            raise bad
        return value
    if key in ("t_min", "t_max", "data_std", "rho"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise bad
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad
    return value


def _kind(key: str) -> str:
    return {"ch_mult": "positive integers, e.g. 2,2,2", "attn_resolutions": "resolutions, e.g. 16 or 16,8",
            "weights": " or ".join(WEIGHTS), "t_min": "a positive number", "t_max": "a positive number",
            "data_std": "a positive number", "rho": "a positive number"}.get(key, "a positive integer")


# --- reading the flax file -----------------------------------------------------------------------------------

def _ext_hook(code: int, data: bytes) -> Any:
    """flax.serialization's msgpack extensions: 1 ndarray, 2 complex, 3 numpy scalar."""
    import msgpack

    if code in (1, 3):
        shape, dtype, buffer = msgpack.unpackb(data, raw=True)
        name = dtype.decode()
        if name == "bfloat16":  # jax's dtype, not numpy's: widen its bits to float32 (bf16 = top half of fp32)
            raw = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32).reshape(shape)
        else:
            arr = np.frombuffer(buffer, dtype=np.dtype(name)).reshape(shape)
        return arr[()] if code == 3 else arr
    if code == 2:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise ValueError(f"unknown msgpack extension type {code}")


def _unchunk(tree: Any) -> Any:
    """flax splits arrays over 1 GiB into ``{'__msgpack_chunked_array__', 'shape', 'chunks'}``."""
    if isinstance(tree, dict):
        if "__msgpack_chunked_array__" in tree:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_flax_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict of a flax checkpoint file (``serialization.msgpack_restore``), arrays as numpy.
    Raises CheckpointError (one line) for a missing, unreadable or corrupt file."""
    import msgpack

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        state = msgpack.unpackb(path.read_bytes(), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError, …)
        raise CheckpointError(f"corrupt flax checkpoint {path}: not a flax msgpack file ({first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"corrupt flax checkpoint {path}: expected a training state (a mapping), got "
                              f"{type(state).__name__}")
    return _unchunk(state)


def select_params(state: dict[str, Any], weights: str, path: Path) -> dict[str, Any]:
    """The parameter tree to convert: ``state[weights]`` of a training state (``params_ema`` by default),
    or ``state`` itself when it is a bare parameter tree."""
    if "GaussianFourierProjection_0" in state:
        return state
    if weights not in state or not isinstance(state[weights], dict):
        raise CheckpointError(f"{path} holds no {weights!r} parameter tree (top-level keys: "
                              f"{', '.join(map(str, state)) or 'none'}); is it a consistency_models_cifar10 checkpoint?")
    tree = state[weights]
    if "params" in tree and "GaussianFourierProjection_0" not in tree:  # a {'params': …} variables dict
        tree = tree["params"]
    return tree


# --- the flax tree ↔ NCSNppModel ----------------------------------------------------------------------------

def model_config(flags: dict[str, Any]) -> dict[str, Any]:
    """NCSNppModel's config for the flags."""
    return dict(sample_size=flags["image_size"], in_channels=flags["num_channels"], out_channels=flags["num_channels"],
                nf=flags["nf"], ch_mult=tuple(flags["ch_mult"]), num_res_blocks=flags["num_res_blocks"],
                attn_resolutions=tuple(flags["attn_resolutions"]))


class _Names:
    """flax's automatic module names: ``Class_k``, k counting that class's children of one parent in order."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, cls: str) -> str:
        k = self.counts.get(cls, 0)
        self.counts[cls] = k + 1
        return f"{cls}_{k}"


def layout(model: torch.nn.Module) -> Iterator[tuple[str, str, str]]:
    """(flax module path, torch module name, kind) for every parametrised layer, in the order the flax model
    creates them (NCSNpp.__call__), so the first mismatch found is the first layer that differs."""
    cfg = model.config
    top = _Names()
    yield top("GaussianFourierProjection"), "", "fourier"
    yield top("Dense"), "time_linear_1", "dense"
    yield top("Dense"), "time_linear_2", "dense"
    yield top("Conv"), "conv_in", "conv"

    def resnet(torch_name: str) -> Iterator[tuple[str, str, str]]:
        prefix, names = top("ResnetBlockBigGANpp"), _Names()
        yield f"{prefix}/{names('GroupNorm')}", f"{torch_name}.norm1", "norm"
        yield f"{prefix}/{names('Conv')}", f"{torch_name}.conv1", "conv"
        yield f"{prefix}/{names('Dense')}", f"{torch_name}.time_emb_proj", "dense"
        yield f"{prefix}/{names('GroupNorm')}", f"{torch_name}.norm2", "norm"
        yield f"{prefix}/{names('Conv')}", f"{torch_name}.conv2", "conv"
        if model.get_submodule(torch_name).conv_shortcut is not None:
            yield f"{prefix}/{names('Conv')}", f"{torch_name}.conv_shortcut", "conv"

    def attn(torch_name: str) -> Iterator[tuple[str, str, str]]:
        prefix = top("AttnBlockpp")
        yield f"{prefix}/GroupNorm_0", f"{torch_name}.group_norm", "norm"
        for i, proj in enumerate(("to_q", "to_k", "to_v", "to_out.0")):
            yield f"{prefix}/NIN_{i}", f"{torch_name}.{proj}", "nin"

    levels, blocks = len(cfg.ch_mult), cfg.num_res_blocks
    for level in range(levels):
        for b in range(blocks):
            i = level * blocks + b
            yield from resnet(f"down_resnets.{i}")
            if str(i) in model.down_attns:
                yield from attn(f"down_attns.{i}")
        if level != levels - 1:
            yield from resnet(f"down_samplers.{level}")
            yield f"{top('Downsample')}/Conv2d_0", f"pyramid_downs.{level}.Conv2d_0", "fir_conv"
    yield from resnet("mid.0")
    yield from attn("mid.1")
    yield from resnet("mid.2")
    up = 0
    for n, level in enumerate(reversed(range(levels))):
        for _ in range(blocks + 1):
            yield from resnet(f"up_resnets.{up}")
            up += 1
        if str(level) in model.up_attns:
            yield from attn(f"up_attns.{level}")
        if level != 0:
            yield from resnet(f"up_samplers.{n}")
    yield top("GroupNorm"), "norm_out", "norm"
    yield top("Conv"), "conv_out", "conv"


# flax leaf name → (torch parameter name, array → torch layout, torch shape → flax shape), per kind of layer:
# flax stores conv kernels HWIO and Dense/NIN kernels (in, out); torch OIHW and (out, in).
_SAME = (lambda a: a, lambda s: s)
_T = (lambda a: a.T, lambda s: s[::-1])
_HWIO = (lambda a: a.transpose(3, 2, 0, 1), lambda s: (s[2], s[3], s[1], s[0]))
_LEAVES = {
    "fourier": {"W": ("fourier_weight", *_SAME)},
    "dense": {"kernel": ("weight", *_T), "bias": ("bias", *_SAME)},
    "nin": {"W": ("weight", *_T), "b": ("bias", *_SAME)},
    "norm": {"scale": ("weight", *_SAME), "bias": ("bias", *_SAME)},
    "conv": {"kernel": ("weight", *_HWIO), "bias": ("bias", *_SAME)},
    "fir_conv": {"weight": ("weight", *_HWIO), "bias": ("bias", *_SAME)},
}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flat(value, path))
        else:
            out[path] = value
    return out


def _hint(path: str) -> str:
    head = path.split("/")[0]
    return HINTS.get(head) or HINTS.get(head.rsplit("_", 1)[0], "nf, ch_mult, num_res_blocks, attn_resolutions")


def convert_tree(tree: dict[str, Any], model: torch.nn.Module, where: str) -> dict[str, torch.Tensor]:
    """The NCSNppModel state dict holding the flax tree's values; raises CheckpointError naming the first leaf
    (in creation order) that is missing, extra, misshapen or not finite, and the flags to check."""
    flat = _flat(tree)
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for module, torch_name, kind in layout(model):
        for leaf, (param, to_torch, to_flax) in _LEAVES[kind].items():
            path = f"{module}/{leaf}"
            name = f"{torch_name}.{param}" if torch_name else param
            want = tuple(to_flax(tuple(params[name].shape)))
            if path not in flat:
                raise CheckpointError(f"{where}: the flags' architecture needs {path} {want}, which the checkpoint "
                                      f"lacks (check --set {_hint(path)})")
            value = flat.pop(path)
            shape = tuple(np.shape(value))
            if shape != want:
                raise CheckpointError(f"{where}: {path} has shape {shape}, the flags give {want} "
                                      f"(check --set {_hint(path)})")
            array = np.asarray(value)
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise CheckpointError(f"{where}: {path} is not finite floating point ({array.dtype}); corrupt checkpoint")
            state[name] = torch.from_numpy(np.ascontiguousarray(to_torch(array.astype(np.float32))))
    if flat:
        path = next(iter(flat))
        raise CheckpointError(f"{where}: the checkpoint has {path}, which the flags' architecture lacks "
                              f"(check --set {_hint(path)})")
    return state


def convert_ncsnpp_flax(checkpoint: str | Path, out: str | Path, sets: list[str] | None = None) -> Path:
    """Convert a ``consistency_models_cifar10`` checkpoint into a ``ConsistencyModelPipeline``-layout folder
    at ``out`` (which must not exist) and return its path.

    ``sets``: ``KEY=VALUE`` flags with the config's names (:func:`parse_sets`). Everything is read and
    checked before anything is written; the folder is written beside ``out`` under a temporary name and
    renamed, so a failure leaves nothing. Raises InvalidArgument or CheckpointError (one line).
    """
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    from benchbench.models.ncsnpp import NCSNppModel

    flags = parse_sets(list(sets or []))
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists():
        raise InvalidArgument(f"--out {out} already exists; give a new folder (nothing was written)")
    if flags["t_min"] >= flags["t_max"]:
        raise InvalidArgument(f"t_min={flags['t_min']:g} must be below t_max={flags['t_max']:g}")
    state = read_flax_checkpoint(checkpoint)
    tree = select_params(state, flags["weights"], checkpoint)
    model = NCSNppModel(**model_config(flags))
    model.load_state_dict(convert_tree(tree, model, str(checkpoint)))
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=flags["num_scales"], sigma_min=flags["t_min"],
                                               sigma_max=flags["t_max"], sigma_data=flags["data_std"],
                                               rho=flags["rho"])
    manifest = {"converted_from": "openai/consistency_models_cifar10 (flax NCSN++ training state)",
                "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                "flags": {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items()},
                "consistency_function": "models/utils.get_distiller_fn with pred_t = t_min"}
    with new_folder(out) as tmp:
        ConsistencyModelPipeline(unet=model, scheduler=scheduler).save_pretrained(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out

