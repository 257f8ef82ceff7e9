"""openai/consistency_models_cifar10's NCSN++ and consistency function, re-implemented in numpy (float64) for
the tests, straight from the flax source (jcm/models/ncsnpp.py, layerspp.py, layers.py, up_or_down_sampling.py,
utils.get_distiller_fn) — not from benchbench's converter.

It reads the flax parameter tree as flax writes it: modules named by class and creation order within their
parent (``ResnetBlockBigGANpp_3``, ``Conv_0``), NHWC activations, HWIO conv kernels, Dense kernels (in, out),
GroupNorm ``scale``/``bias``, NIN ``W`` (in, out) and ``b``, the FIR ``Conv2d`` ``weight``/``bias``, the Fourier
``W``. ``init_params`` builds a random tree by running the same forward pass in creation mode, the way
flax's ``init`` does, so names and shapes follow from the code path alone.

Only the configuration the CIFAR-10 consistency models use is written (configs/cifar10_ve_cd.py and
cifar10_ve_ct_*.py): resblock_type biggan, progressive none, progressive_input residual, combine sum,
skip_rescale, FIR kernel [1, 3, 3, 1], Fourier embedding, swish, attention_type ddpm, double_heads False.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

CD_CIFAR10 = dict(nf=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), image_size=32,
                  num_channels=3, fir_kernel=(1, 3, 3, 1))
T_MIN, DATA_STD = 0.002, 0.5


class Scope:
    """A flax module scope: hands out child names ``Class_k`` in creation order and reads (or, when
    creating, makes) parameters."""

    def __init__(self, tree: dict, rng: np.random.RandomState | None):
        self.tree, self.rng, self.counts = tree, rng, defaultdict(int)

    def child(self, cls: str) -> "Scope":
        name = f"{cls}_{self.counts[cls]}"
        self.counts[cls] += 1
        if self.rng is not None:
            self.tree.setdefault(name, {})
        return Scope(self.tree[name], self.rng)

    def param(self, name: str, shape: tuple, kind: str) -> np.ndarray:
        if self.rng is not None and name not in self.tree:
            self.tree[name] = _random(self.rng, shape, kind).astype(np.float32)
        value = np.asarray(self.tree[name], dtype=np.float64)
        assert value.shape == tuple(shape), (name, value.shape, shape)
        return value


def _random(rng: np.random.RandomState, shape: tuple, kind: str) -> np.ndarray:
    # Random but O(1)-preserving weights, so every path of the network shows in the output.
    if kind == "scale":
        return 1.0 + 0.2 * rng.randn(*shape)
    if kind == "bias":
        return 0.2 * rng.randn(*shape)
    if kind == "fourier":
        return 16.0 * rng.randn(*shape)  # the config's fourier_scale: the init the original uses
    fan_in = int(np.prod(shape[:-1]))
    return rng.randn(*shape) / math.sqrt(fan_in)


# --- layers -----------------------------------------------------------------------------------------------------

def swish(x):
    return x / (1.0 + np.exp(-x))


def group_norm(s: Scope, x):
    """flax.linen.GroupNorm(num_groups=min(C // 4, 32)), epsilon 1e-6."""
    g = s.child("GroupNorm")
    B, H, W, C = x.shape
    groups = min(C // 4, 32)
    y = x.reshape(B, H, W, groups, C // groups)
    mean = y.mean(axis=(1, 2, 4), keepdims=True)
    var = ((y - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    y = ((y - mean) / np.sqrt(var + 1e-6)).reshape(B, H, W, C)
    return y * g.param("scale", (C,), "scale") + g.param("bias", (C,), "bias")


def _correlate(x, w, stride=1):
    """VALID cross-correlation, x NHWC, w HWIO (jax.lax.conv_general_dilated)."""
    kh, kw = w.shape[:2]
    H = (x.shape[1] - kh) // stride + 1
    W = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], H, W, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (H - 1) + 1:stride, j:j + stride * (W - 1) + 1:stride]
            out += np.einsum("bhwi,io->bhwo", patch, w[i, j])
    return out


def conv(s: Scope, x, out_ch, size=3):
    """layers.ddpm_conv3x3 / ddpm_conv1x1: nn.Conv, SAME padding, bias."""
    c = s.child("Conv")
    w = c.param("kernel", (size, size, x.shape[-1], out_ch), "weight")
    p = size // 2
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return _correlate(x, w) + c.param("bias", (out_ch,), "bias")


def dense(s: Scope, x, out):
    d = s.child("Dense")
    return x @ d.param("kernel", (x.shape[-1], out), "weight") + d.param("bias", (out,), "bias")


def nin(s: Scope, x, out):
    n = s.child("NIN")
    return np.tensordot(x, n.param("W", (x.shape[-1], out), "weight"), 1) + n.param("b", (out,), "bias")


def _fir(k):
    k = np.asarray(k, dtype=np.float64)
    k = np.outer(k, k)
    return k / k.sum()


def upfirdn(x, k, up=1, down=1, pad0=0, pad1=0):
    """StyleGAN2's upfirdn_2d on NHWC: insert zeros, pad, convolve with k (flipped), keep every down-th."""
    B, H, W, C = x.shape
    if up > 1:
        z = np.zeros((B, H * up, W * up, C))
        z[:, ::up, ::up] = x
        x = z
    x = np.pad(x, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
    kf = k[::-1, ::-1]
    out = np.zeros((B, x.shape[1] - k.shape[0] + 1, x.shape[2] - k.shape[1] + 1, C))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += kf[i, j] * x[:, i:i + out.shape[1], j:j + out.shape[2]]
    return out[:, ::down, ::down]


def upsample_fir(x, k):
    k = _fir(k) * 4
    p = k.shape[0] - 2
    return upfirdn(x, k, up=2, pad0=(p + 1) // 2 + 1, pad1=p // 2)


def downsample_fir(x, k):
    k = _fir(k)
    p = k.shape[0] - 2
    return upfirdn(x, k, down=2, pad0=(p + 1) // 2, pad1=p // 2)


def conv_downsample_fir(s: Scope, x, out_ch, k):
    """layerspp.Downsample(with_conv=True, fir=True): up_or_down_sampling.Conv2d(down=True)."""
    c = s.child("Conv2d")
    w = c.param("weight", (3, 3, x.shape[-1], out_ch), "weight")
    k = _fir(k)
    p = (k.shape[0] - 2) + (3 - 1)
    x = upfirdn(x, k, pad0=(p + 1) // 2, pad1=p // 2)
    return _correlate(x, w, stride=2) + c.param("bias", (out_ch,), "bias")


def resnet_biggan(s: Scope, x, temb, out_ch=None, up=False, down=False, fir_kernel=(1, 3, 3, 1)):
    """layerspp.ResnetBlockBigGANpp with fir=True, skip_rescale=True (dropout is off at evaluation)."""
    r = s.child("ResnetBlockBigGANpp")
    C = x.shape[-1]
    out_ch = out_ch or C
    h = swish(group_norm(r, x))
    if up:
        h, x = upsample_fir(h, fir_kernel), upsample_fir(x, fir_kernel)
    elif down:
        h, x = downsample_fir(h, fir_kernel), downsample_fir(x, fir_kernel)
    h = conv(r, h, out_ch)
    h = h + dense(r, swish(temb), out_ch)[:, None, None, :]
    h = swish(group_norm(r, h))
    h = conv(r, h, out_ch)
    if C != out_ch or up or down:
        x = conv(r, x, out_ch, size=1)
    return (x + h) / np.sqrt(2.0)


def attention(s: Scope, x):
    """layerspp.AttnBlockpp with skip_rescale=True."""
    a = s.child("AttnBlockpp")
    B, H, W, C = x.shape
    h = group_norm(a, x)
    q, k, v = nin(a, h, C), nin(a, h, C), nin(a, h, C)
    w = np.einsum("bhwc,bHWc->bhwHW", q, k) * C ** -0.5
    w = w.reshape(B, H, W, H * W)
    w = np.exp(w - w.max(-1, keepdims=True))
    w = (w / w.sum(-1, keepdims=True)).reshape(B, H, W, H, W)
    h = nin(a, np.einsum("bhwHW,bHWc->bhwc", w, v), C)
    return (x + h) / np.sqrt(2.0)


# --- the network and the consistency function ------------------------------------------------------------------

def ncsnpp(params: dict, x, cond, cfg: dict = CD_CIFAR10, rng: np.random.RandomState | None = None):
    """NCSNpp.__call__(x, time_cond, train=False): x (B, H, W, C) NHWC, cond (B,) the noise conditioning."""
    s = Scope(params, rng)
    nf, ch_mult, R = cfg["nf"], cfg["ch_mult"], cfg["num_res_blocks"]
    attn_res, fk = cfg["attn_resolutions"], cfg["fir_kernel"]
    g = s.child("GaussianFourierProjection")
    W = g.param("W", (nf,), "fourier")
    proj = cond[:, None] * W[None, :] * 2 * np.pi
    temb = np.concatenate([np.sin(proj), np.cos(proj)], axis=-1)
    temb = dense(s, temb, nf * 4)
    temb = dense(s, swish(temb), nf * 4)

    pyramid = x
    hs = [conv(s, x, nf)]
    for level in range(len(ch_mult)):
        for _ in range(R):
            h = resnet_biggan(s, hs[-1], temb, out_ch=nf * ch_mult[level], fir_kernel=fk)
            if h.shape[1] in attn_res:
                h = attention(s, h)
            hs.append(h)
        if level != len(ch_mult) - 1:
            h = resnet_biggan(s, hs[-1], temb, down=True, fir_kernel=fk)
            pyramid = conv_downsample_fir(s.child("Downsample"), pyramid, h.shape[-1], fk)
            pyramid = (pyramid + h) / np.sqrt(2.0)
            h = pyramid
            hs.append(h)

    h = hs[-1]
    h = resnet_biggan(s, h, temb, fir_kernel=fk)
    h = attention(s, h)
    h = resnet_biggan(s, h, temb, fir_kernel=fk)

    for level in reversed(range(len(ch_mult))):
        for _ in range(R + 1):
            h = resnet_biggan(s, np.concatenate([h, hs.pop()], axis=-1), temb, out_ch=nf * ch_mult[level],
                              fir_kernel=fk)
        if h.shape[1] in attn_res:
            h = attention(s, h)
        if level != 0:
            h = resnet_biggan(s, h, temb, up=True, fir_kernel=fk)
    assert not hs
    h = swish(group_norm(s, h))
    return conv(s, h, x.shape[-1])


def init_params(cfg: dict = CD_CIFAR10, seed: int = 0) -> dict:
    """A random parameter tree of the architecture, created by running it once (flax's ``init``)."""
    params: dict = {}
    size = cfg["image_size"]
    ncsnpp(params, np.zeros((1, size, size, cfg["num_channels"])), np.zeros(1), cfg, np.random.RandomState(seed))
    return params


def consistency_fn(params: dict, x, t, cfg: dict = CD_CIFAR10, t_min: float = T_MIN, data_std: float = DATA_STD):
    """models/utils.get_distiller_fn (what the onestep and seeded samplers call with ``params_ema``):
    f(x, t) = c_skip·x + c_out·F(x / √(t² + σ_d²), 0.25·ln t), c_skip = σ_d² / ((t − t_min)² + σ_d²),
    c_out = (t − t_min)·σ_d / √(t² + σ_d²). x (B, H, W, C) NHWC, t (B,)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    col = t[:, None, None, None]
    out = ncsnpp(params, x / np.sqrt(col**2 + data_std**2), 0.25 * np.log(t), cfg)
    c_out = (col - t_min) * data_std / np.sqrt(col**2 + data_std**2)
    c_skip = data_std**2 / ((col - t_min) ** 2 + data_std**2)
    return c_skip * x + c_out * out
