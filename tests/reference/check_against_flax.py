"""Desk check of the numpy reference against the original flax code (not part of the suite: it needs jax and
flax, which the tests do not). Run it in an environment with ``jax flax msgpack numpy``:

    python tests/reference/check_against_flax.py PATH/TO/consistency_models_cifar10

It imports that checkout's own ``jcm`` (stubbing the training-only imports: haiku, blobfile, absl, PIL,
ml_collections) and checks, at full width and at a reduced one, that

* flax's ``init`` of ``NCSNpp`` makes exactly the parameter names and shapes :func:`init_params` makes;
* ``get_distiller_fn`` (the consistency function the samplers use) on the reference's random weights equals
  :func:`consistency_fn` (max abs difference printed; flax runs in float32);
* ``flax.serialization.msgpack_restore`` reads the checkpoint :func:`write_train_state` writes, and
  ``flax.serialization.to_bytes`` of the same state gives the same bytes.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reference.flax_msgpack import write_train_state  # noqa: E402
from reference.ncsnpp_flax import CD_CIFAR10, consistency_fn, init_params  # noqa: E402


class Cfg(types.SimpleNamespace):
    """ml_collections.ConfigDict's attribute access (a dict subclass would become a flax FrozenDict)."""


def stub_training_imports() -> None:
    for name in ("haiku", "blobfile", "absl", "absl.logging", "PIL", "PIL.Image"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["absl"].logging = sys.modules["absl.logging"]
    sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    collections = types.ModuleType("ml_collections")
    collections.ConfigDict = Cfg
    sys.modules["ml_collections"] = collections


def config(cfg: dict):
    model = Cfg(name="ncsnpp", normalization="GroupNorm", nonlinearity="swish", nf=cfg["nf"],
                ch_mult=tuple(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
                attn_resolutions=tuple(cfg["attn_resolutions"]), resamp_with_conv=True, conditional=True, fir=True,
                fir_kernel=list(cfg["fir_kernel"]), skip_rescale=True, resblock_type="biggan", progressive="none",
                progressive_input="residual", progressive_combine="sum", attention_type="ddpm", init_scale=0.0,
                fourier_scale=16, conv_size=3, embedding_type="fourier", dropout=0.0, double_heads=False,
                t_min=0.002, t_max=80.0, rho=7.0, data_std=0.5, num_scales=18)
    return Cfg(model=model, data=Cfg(image_size=cfg["image_size"], num_channels=cfg["num_channels"]))


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = tuple(np.shape(v))
    return out


def main(checkout: str) -> None:
    stub_training_imports()
    sys.path.insert(0, checkout)
    import jax
    import jax.numpy as jnp
    from flax import serialization

    from jcm import sde_lib
    from jcm.models import ncsnpp, utils as mutils

    small = dict(CD_CIFAR10, nf=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), image_size=16)
    for name, cfg in (("full", CD_CIFAR10), ("reduced", small)):
        model = ncsnpp.NCSNpp(config=config(cfg))
        size, ch = cfg["image_size"], cfg["num_channels"]
        variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                               jnp.zeros((1, size, size, ch)), jnp.zeros((1,)), train=False)
        theirs, ours = flat(variables["params"]), flat(init_params(cfg, seed=3))
        assert list(theirs) == list(ours) or sorted(theirs.items()) == sorted(ours.items()), \
            (set(theirs) ^ set(ours), [k for k in theirs if theirs[k] != ours.get(k)][:5])
        print(f"{name}: {len(ours)} parameter arrays, names and shapes identical to flax's init")
        if name == "full":
            continue
        params = init_params(cfg, seed=3)
        sde = sde_lib.KVESDE(t_min=0.002, t_max=80.0, N=18, rho=7.0, data_std=0.5)
        distiller = mutils.get_distiller_fn(sde, model, jax.tree_util.tree_map(jnp.asarray, params), {}, train=False)
        x = np.random.RandomState(5).randn(2, size, size, ch).astype(np.float32)
        for t in (0.002, 0.05, 0.5, 1.0, 2.0, 80.0):
            got = np.asarray(distiller(jnp.asarray(x), jnp.full((2,), t, dtype=jnp.float32)))
            ref = consistency_fn(params, x, np.full(2, t), cfg)
            print(f"  t={t:g}: max |flax - reference| = {np.abs(got - ref).max():.2e} (max |f| = {np.abs(ref).max():.2f})")
            assert np.abs(got - ref).max() < 1e-4  # flax computes in float32, the reference in float64
        with tempfile.TemporaryDirectory() as tmp:
            path = write_train_state(Path(tmp) / "checkpoint_1", params)
            restored = serialization.msgpack_restore(path.read_bytes())
            assert flat(restored["params_ema"]) == flat(params)
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(restored["params_ema"]),
                                                            jax.tree_util.tree_leaves(params)))
            state = serialization.msgpack_restore(path.read_bytes())
            same = serialization.msgpack_serialize(state) == path.read_bytes()
            print(f"  flax reads the test's checkpoint file; flax re-serialises it byte for byte: {same}")
            assert same


if __name__ == "__main__":
    main(sys.argv[1])
