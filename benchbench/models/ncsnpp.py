"""NCSN++ as openai's ``consistency_models_cifar10`` builds it (jcm/models/ncsnpp.py), in torch.

Li et al.'s CIFAR-10 consistency models (Song et al.'s CD and CT checkpoints) are a score_sde NCSN++ with
BigGAN residual blocks using FIR up/down-sampling, skip rescaling by 1/√2, DDPM-style attention at 16×16, a
Gaussian Fourier embedding of the noise conditioning 0.25·ln σ, no output pyramid (``progressive`` none) and an
input pyramid of ``progressive_input`` residual: at each down-sampling the input image is FIR-conv down-sampled
to the block's channels and averaged into the features, (pyramid + h)/√2. The network's output is not divided
by σ (the consistency function scales it by c_out).

diffusers' ``UNet2DModel`` cannot hold that: its skip blocks implement the other pyramid modes (input_skip and
output_skip), its Fourier embedding takes ln of the timestep and divides the output by it, and it fixes one
GroupNorm group count where NCSN++ uses min(C/4, 32) per layer. So this is the smallest module that computes
exactly the original, built from diffusers' own blocks (``ResnetBlock2D`` with ``kernel="fir"``, ``Attention``,
``FirDownsample2D``). It is a diffusers ``ModelMixin``: ``save_pretrained``/``from_pretrained`` write and read
it like any UNet, with its config beside the weights.

Its ``timestep`` is the one diffusers' ``CMStochasticIterativeScheduler.sigma_to_t`` gives (250·ln σ), what
:class:`benchbench.models.consistency.ConsistencyModel` passes every UNet; ``timestep_scale`` (stored in the
config, 0.001) turns it back into the original's conditioning 0.25·ln σ.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import FirDownsample2D
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

SQRT2 = math.sqrt(2.0)
FIR_KERNEL = (1, 3, 3, 1)  # the configs' fir_kernel; diffusers' ResnetBlock2D(kernel="fir") uses exactly this


def groups(channels: int) -> int:
    """NCSN++'s GroupNorm group count: min(C // 4, 32)."""
    return min(channels // 4, 32)


def resnet(in_ch: int, out_ch: int, temb: int, up: bool = False, down: bool = False) -> ResnetBlock2D:
    """layerspp.ResnetBlockBigGANpp (fir, skip_rescale): GroupNorm ε = 1e-6 as flax's, 1×1 shortcut conv when
    the channels change or the block resamples."""
    return ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=temb, groups=groups(in_ch),
                         groups_out=groups(out_ch), eps=1e-6, non_linearity="swish", kernel="fir",
                         output_scale_factor=SQRT2, use_in_shortcut=in_ch != out_ch or up or down, up=up, down=down)


def attention(ch: int) -> Attention:
    """layerspp.AttnBlockpp (skip_rescale): one head over all channels, (x + attn(x)) / √2."""
    return Attention(ch, heads=1, dim_head=ch, bias=True, norm_num_groups=groups(ch), eps=1e-6,
                     rescale_output_factor=SQRT2, residual_connection=True, _from_deprecated_attn_block=True)


class NCSNppModel(ModelMixin, ConfigMixin):
    """F(x, t): x (B, C, H, W) already scaled by c_in; ``timestep`` (B,) or a scalar, 250·ln σ (diffusers' CM
    convention; float64 keeps the Fourier phases exact). Returns ``UNet2DOutput(sample=…)`` of x's shape.

    Config keys are the original's (``nf``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``) plus
    ``sample_size``, ``in_channels``, ``out_channels`` (= in_channels) and ``timestep_scale``.
    """

    @register_to_config
    def __init__(self, sample_size: int = 32, in_channels: int = 3, out_channels: int = 3, nf: int = 128,
                 ch_mult: Sequence[int] = (2, 2, 2), num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 timestep_scale: float = 1e-3):
        super().__init__()
        temb = 4 * nf
        self.fourier_weight = nn.Parameter(torch.zeros(nf), requires_grad=False)
        self.time_linear_1 = nn.Linear(2 * nf, temb)
        self.time_linear_2 = nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(in_channels, nf, 3, padding=1)
        levels, res = len(ch_mult), sample_size
        self.down_resnets, self.down_attns = nn.ModuleList(), nn.ModuleDict()
        self.down_samplers, self.pyramid_downs = nn.ModuleList(), nn.ModuleList()
        chans, ch, pyramid_ch = [nf], nf, in_channels
        for level in range(levels):
            for _ in range(num_res_blocks):
                self.down_resnets.append(resnet(ch, nf * ch_mult[level], temb))
                ch = nf * ch_mult[level]
                if res in attn_resolutions:
                    self.down_attns[str(len(self.down_resnets) - 1)] = attention(ch)
                chans.append(ch)
            if level != levels - 1:
                self.down_samplers.append(resnet(ch, ch, temb, down=True))
                self.pyramid_downs.append(FirDownsample2D(pyramid_ch, ch, use_conv=True, fir_kernel=FIR_KERNEL))
                pyramid_ch = ch
                chans.append(ch)
                res //= 2
        self.mid = nn.ModuleList([resnet(ch, ch, temb), attention(ch), resnet(ch, ch, temb)])
        self.up_resnets, self.up_attns, self.up_samplers = nn.ModuleList(), nn.ModuleDict(), nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                self.up_resnets.append(resnet(ch + chans.pop(), nf * ch_mult[level], temb))
                ch = nf * ch_mult[level]
            if res in attn_resolutions:
                self.up_attns[str(level)] = attention(ch)
            if level != 0:
                self.up_samplers.append(resnet(ch, ch, temb, up=True))
                res *= 2
        self.norm_out = nn.GroupNorm(groups(ch), ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def time_embedding(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Fourier features of 0.25·ln σ, then Dense, swish, Dense (no activation: each block applies one)."""
        t = torch.as_tensor(timestep, device=self.conv_in.weight.device).reshape(-1)
        cond = t.double() * self.config.timestep_scale
        # The phases reach hundreds of radians (W ~ N(0, 16²)): computed in float64 so that rounding the input
        # to float32 first does not move them by ~1e-5.
        proj = cond[:, None] * self.fourier_weight.double()[None, :] * (2 * math.pi)
        emb = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1).to(dtype).expand(batch, -1)
        return self.time_linear_2(nn.functional.silu(self.time_linear_1(emb)))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                class_labels: torch.Tensor | None = None, return_dict: bool = True) -> UNet2DOutput | tuple:
        """NCSNpp.__call__(x, time_cond, train=False) of the original, in NCHW."""
        if class_labels is not None:
            raise ValueError("this NCSN++ is unconditional: class_labels must be None")
        temb = self.time_embedding(timestep, len(sample), sample.dtype)
        levels = len(self.config.ch_mult)
        blocks = self.config.num_res_blocks
        pyramid = sample
        hs = [self.conv_in(sample)]
        for level in range(levels):
            for b in range(blocks):
                i = level * blocks + b
                h = self.down_resnets[i](hs[-1], temb)
                if str(i) in self.down_attns:
                    h = self.down_attns[str(i)](h)
                hs.append(h)
            if level != levels - 1:
                h = self.down_samplers[level](hs[-1], temb)
                pyramid = (self.pyramid_downs[level](pyramid) + h) / SQRT2  # progressive_input residual
                h = pyramid
                hs.append(h)
        h = self.mid[0](hs[-1], temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)
        up = iter(self.up_resnets)
        for n, level in enumerate(reversed(range(levels))):
            for _ in range(blocks + 1):
                h = next(up)(torch.cat([h, hs.pop()], dim=1), temb)
            if str(level) in self.up_attns:
                h = self.up_attns[str(level)](h)
            if level != 0:
                h = self.up_samplers[n](h, temb)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return UNet2DOutput(sample=out) if return_dict else (out,)
