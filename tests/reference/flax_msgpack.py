"""Write a checkpoint the way flax.serialization.to_bytes does (flax/serialization.py, msgpack_serialize):
the state dict packed by msgpack, each ndarray as ExtType 1 holding msgpack((shape, dtype name, C-order
bytes)), each numpy scalar as ExtType 3 in the same form, dict keys sorted (msgpack_serialize rebuilds the
tree with jax.tree_util, which sorts them). For the tests: openai's training state
(jcm/models/utils.State) as restore_checkpoint reads it."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np


def _ext(obj):
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
    if isinstance(obj, np.generic):
        arr = np.asarray(obj)
        return msgpack.ExtType(3, msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True))
    raise TypeError(type(obj))


def _sorted(tree):
    return {k: _sorted(tree[k]) for k in sorted(tree)} if isinstance(tree, dict) else tree


def write_train_state(path: Path, params_ema: dict, params: dict | None = None) -> Path:
    """A ``State`` checkpoint (step, lr, ema_rate, params, params_ema, model_state, opt_state, rng_state)."""
    state = {"step": 800000, "lr": np.float32(4e-4), "ema_rate": 0.9999,
             "params": params if params is not None else params_ema, "params_ema": params_ema,
             "model_state": {}, "opt_state": {"0": {"count": np.array(800000, dtype=np.int32)}, "1": {}},
             "rng_state": np.array([0, 42], dtype=np.uint32)}
    path.write_bytes(msgpack.packb(_sorted(state), default=_ext, strict_types=True))
    return path
