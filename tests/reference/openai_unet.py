"""An independent re-implementation of openai's UNetModel and the formulas around it, for the conversion tests.

Written from the published architecture (improved-diffusion, guided-diffusion, consistency_models), with
their parameter names, so that ``state_dict()`` is a checkpoint in the original layout; it shares no code
with ``benchbench.models.openai_unet``. Also here: improved-diffusion's β schedules and ``pred_xstart``,
DDS's choice of t*, and consistency_models' ``denoise``, all in the precision the originals use.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = max_period^(−i/half), i < half = dim // 2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    """norm → SiLU → [resample] → conv; + timestep embedding (added, or as scale/shift of the second norm);
    norm → SiLU → dropout → conv; plus the (resampled, possibly 1×1-projected) input."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return nn.functional.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + e))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions with a fused 1×1 qkv projection. ``order`` says how the 3C qkv
    channels are laid out: ``legacy`` = per head [q, k, v] (QKVAttentionLegacy), ``new`` = [q of all
    heads, k …, v …] (QKVAttention; also consistency_models' attention). ``qkv_dims`` 1 = Conv1d weights
    (improved/guided-diffusion), 2 = Conv2d (consistency_models)."""

    def __init__(self, channels: int, heads: int, order: str, qkv_dims: int = 1):
        super().__init__()
        self.heads, self.order = heads, order
        conv = nn.Conv1d if qkv_dims == 1 else nn.Conv2d
        self.norm = group_norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj_out = conv(channels, channels, 1)
        self.qkv_dims = qkv_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        n = int(np.prod(spatial))
        normed = self.norm(x)
        qkv = self.qkv(normed.reshape(b, c, n) if self.qkv_dims == 1 else normed).reshape(b, 3 * c, n)
        d = c // self.heads
        if self.order == "legacy":
            q, k, v = qkv.reshape(b * self.heads, 3 * d, n).split(d, dim=1)
        else:
            q, k, v = (part.reshape(b * self.heads, d, n) for part in qkv.chunk(3, dim=1))
        scale = d ** -0.25  # on both q and k: 1/√d overall
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        h = self.proj_out(a if self.qkv_dims == 1 else a.reshape(b, c, *spatial))
        return x + h.reshape(b, c, *spatial)


class Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.ModuleList):
    """TimestepEmbedSequential: layers in turn, the ResBlocks also given the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class OpenAIUNet(nn.Module):
    """openai's UNetModel (2-D, 3 input channels). ``attention_ds``: downsampling rates that attend."""

    def __init__(self, model_channels: int, out_channels: int, num_res_blocks: int, attention_ds: set[int],
                 channel_mult: tuple, num_classes: int | None = None, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, scale_shift: bool = True,
                 updown: bool = False, order: str = "legacy", qkv_dims: int = 1):
        super().__init__()
        self.model_channels = model_channels
        emb = 4 * model_channels
        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, ch // num_head_channels if num_head_channels != -1 else heads, order, qkv_dims)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.num_classes = num_classes
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb)
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(3, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, int(mult * model_channels), scale_shift)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(Seq(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Seq([ResBlock(ch, emb, ch, scale_shift, down=True) if updown else Down(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Seq([ResBlock(ch, emb, ch, scale_shift), attention(ch, num_heads),
                                 ResBlock(ch, emb, ch, scale_shift)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, int(mult * model_channels), scale_shift)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(ch, up_heads))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, scale_shift, up=True) if updown else Up(ch))
                    ds //= 2
                self.output_blocks.append(Seq(layers))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (the originals zero some output convolutions, which would hide bugs):
    N(0, 1/fan_in) matrices and kernels, N(0, 0.1²) biases, norm scales 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, nn.GroupNorm)}
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_((1.0 if id(p) in norms else 0.0) + 0.1 * noise)
    return model.eval()


# --- diffusion formulas ----------------------------------------------------------------------------------


def betas(schedule: str, steps: int) -> np.ndarray:
    """improved-diffusion's named β schedules, float64."""
    if schedule == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=np.float64)


class Diffusion:
    """The parts of improved-diffusion's GaussianDiffusion that one-step denoising uses (float64 tables,
    gathered as float32 at t)."""

    def __init__(self, schedule: str, steps: int, rescale_timesteps: bool):
        self.steps, self.rescale = steps, rescale_timesteps
        self.alphas_cumprod = np.cumprod(1.0 - betas(schedule, steps))
        self.sqrt_recip = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1 = np.sqrt(1.0 / self.alphas_cumprod - 1)

    def dds_timestep(self, sigma: float) -> int:
        """DDS's certify.py: the first t ≥ 1 whose √(1−ᾱ_t)/√ᾱ_t reaches 2σ."""
        t, real = 0, 0.0
        while real < 2 * sigma:
            t += 1
            real = math.sqrt(1 - self.alphas_cumprod[t]) / math.sqrt(self.alphas_cumprod[t])
        return t

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * (1000.0 / self.steps) if self.rescale else t

    def pred_xstart(self, model: nn.Module, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """p_mean_variance's pred_xstart with clip_denoised=True (ε from the first C output channels)."""
        tt = torch.full((len(x_t),), t, dtype=torch.long)
        eps = model(x_t, self.model_t(tt))[:, : x_t.shape[1]]
        a = torch.tensor(self.sqrt_recip[t]).float()
        b = torch.tensor(self.sqrt_recipm1[t]).float()
        return (a * x_t - b * eps).clamp(-1, 1)


def cm_denoise(model: nn.Module, x_t: torch.Tensor, sigmas: torch.Tensor, y: torch.Tensor | None = None,
               sigma_min: float = 0.002, sigma_data: float = 0.5) -> torch.Tensor:
    """consistency_models' KarrasDenoiser.denoise with the boundary-condition scalings (distillation=True,
    what image_sample.py uses for consistency_distillation and consistency_training), in float32."""
    s = sigmas.float()
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = (s - sigma_min) * sigma_data / (s**2 + sigma_data**2) ** 0.5
    c_in = 1 / (s**2 + sigma_data**2) ** 0.5
    view = (-1, 1, 1, 1)
    out = model(c_in.view(view) * x_t, 1000 * 0.25 * torch.log(s + 1e-44), y)
    return c_out.view(view) * out + c_skip.view(view) * x_t


def reference_model(flags: dict) -> OpenAIUNet:
    """The UNetModel the openai scripts' ``create_model`` builds from their flags (``training_mode`` set:
    consistency_models' variant, whose attention splits qkv in the new order with Conv2d weights)."""
    size = flags["image_size"]
    if flags["channel_mult"]:
        mult = tuple(float(m) if "." in m else int(m) for m in flags["channel_mult"].split(","))
    else:
        mult = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}[size]
    cm = bool(flags.get("training_mode"))
    return OpenAIUNet(
        model_channels=flags["num_channels"], out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_ds={size // int(r) for r in flags["attention_resolutions"].split(",")}, channel_mult=mult,
        num_classes=1000 if flags["class_cond"] else None, num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"], num_heads_upsample=flags["num_heads_upsample"],
        scale_shift=flags["use_scale_shift_norm"], updown=flags["resblock_updown"],
        order="new" if cm or flags["use_new_attention_order"] else "legacy", qkv_dims=2 if cm else 1)
