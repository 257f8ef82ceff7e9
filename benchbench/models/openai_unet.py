"""``bench convert openai-unet``: openai's UNetModel checkpoints as folders the one loader reads.

improved-diffusion, guided-diffusion and consistency_models publish ``.pt`` state_dicts of one network
family, openai's ``UNetModel``, described by the flags their scripts take (``--num_channels 128
--attention_resolutions 16,8 …``). :func:`convert` reads such a state_dict and writes

* a ``DDPMPipeline`` folder (``unet/`` ``UNet2DModel``, ``scheduler/`` ``DDPMScheduler``) for a diffusion
  model, which ``ddpm``, ``sde``, ``pfode`` and ``densepure`` take as ``model=FOLDER``, or
* a ``ConsistencyModelPipeline`` folder (``unet/``, ``scheduler/`` ``CMStochasticIterativeScheduler``) when
  ``training_mode`` names a consistency model, which ``consistency`` takes as ``model=FOLDER``,

plus ``conversion.json``: where it came from (file name, sha256, profile, flags) and ``timestep_scale``,
what the original multiplies the timestep by before the network (improved-diffusion's
``rescale_timesteps``: 1000/T), which no diffusers config holds; :mod:`benchbench.models.store` applies it
to every network call, so no purifier needs to know where a model came from.

Every weight maps one-to-one onto a ``UNet2DModel`` (ResBlocks with scale-shift norm and resblock up/down
sampling, 32-group attention norms, learned-variance outputs, class embeddings); only the attention's
fused qkv is split, per head, in the order the original reads it: ``legacy`` (heads, q/k/v, dim: improved-
and guided-diffusion's QKVAttentionLegacy), ``new`` (q/k/v, heads, dim: QKVAttention, guided-diffusion's
``use_new_attention_order``), and consistency_models' attention, which always splits (q/k/v, heads, dim)
whatever ``use_new_attention_order`` says (its flash and legacy paths rearrange alike).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from benchbench.errors import CheckpointError, InvalidArgument, UnknownName, first_line
from benchbench.models.store import CONVERSION, _quiet, file_sha256, new_folder

NUM_CLASSES = 1000  # class_cond in all three repos means ImageNet's 1000 classes
CONSISTENCY_MODES = ("consistency_distillation", "consistency_training")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"expected True or False, got {text!r}")


# The scripts' own flag names and types; unset flags take guided-diffusion's script defaults (the
# consistency_models ones are its image_sample.py defaults).
FLAGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "image_size": (int, 64),
    "num_channels": (int, 128),
    "num_res_blocks": (int, 2),
    "channel_mult": (str, ""),
    "attention_resolutions": (str, "16,8"),
    "num_heads": (int, 4),
    "num_head_channels": (int, -1),
    "num_heads_upsample": (int, -1),
    "use_scale_shift_norm": (_bool, True),
    "resblock_updown": (_bool, False),
    "use_new_attention_order": (_bool, False),
    "learn_sigma": (_bool, False),
    "class_cond": (_bool, False),
    "dropout": (float, 0.0),
    "diffusion_steps": (int, 1000),
    "noise_schedule": (str, "linear"),
    "rescale_timesteps": (_bool, False),
    "training_mode": (str, ""),  # consistency_models: consistency_distillation / consistency_training
    "sigma_min": (float, 0.002),
    "sigma_max": (float, 80.0),
    "steps": (int, 40),  # consistency_models' --steps: the Karras grid the model is sampled on
    # In the READMEs' MODEL_FLAGS, accepted so they can be pasted: how the original runs (half precision,
    # gradient checkpointing), not its weights, which are read as fp32 (bench run --precision runs fp16).
    "use_fp16": (_bool, False),
    "use_checkpoint": (_bool, False),
    # benchbench's own, not an original flag: the image size the folder declares it runs at (0: image_size).
    # The network is convolutional and its attention sits at fixed downsampling rates, so it computes at
    # another size what the original computes there; DDS feeds its 256-px ImageNet model 224-px crops.
    "run_size": (int, 0),
}

# The published files, flags as their READMEs / launch scripts give them (the sources are in the README).
PROFILES: dict[str, dict[str, Any]] = {
    # improved-diffusion cifar10_uncond_50M_500K.pt, as DDS (Carlini et al. 2023) builds it.
    "dds-cifar10": dict(image_size=32, num_channels=128, num_res_blocks=3, num_heads=4, num_heads_upsample=-1,
                        attention_resolutions="16,8", dropout=0.3, learn_sigma=True, class_cond=False,
                        diffusion_steps=4000, noise_schedule="cosine", rescale_timesteps=True,
                        use_scale_shift_norm=True),
    # guided-diffusion 256x256_diffusion_uncond.pt (DDS's ImageNet model).
    "guided-256-uncond": dict(image_size=256, num_channels=256, num_res_blocks=2, num_heads=4, num_head_channels=64,
                              attention_resolutions="32,16,8", resblock_updown=True, use_new_attention_order=False,
                              learn_sigma=True, class_cond=False, diffusion_steps=1000, noise_schedule="linear",
                              use_scale_shift_norm=True, dropout=0.0, rescale_timesteps=False),
    # guided-diffusion 64x64_diffusion.pt (class-conditional).
    "guided-64-cond": dict(image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64,
                           attention_resolutions="32,16,8", resblock_updown=True, use_new_attention_order=True,
                           learn_sigma=True, class_cond=True, diffusion_steps=1000, noise_schedule="cosine",
                           use_scale_shift_norm=True, dropout=0.1, rescale_timesteps=False),
    # The same file as DDS runs it: on Cohen et al.'s 224-px centre crops (DDS imagenet/certify.py).
    "dds-imagenet": dict(image_size=256, num_channels=256, num_res_blocks=2, num_heads=4, num_head_channels=64,
                         attention_resolutions="32,16,8", resblock_updown=True, use_new_attention_order=False,
                         learn_sigma=True, class_cond=False, diffusion_steps=1000, noise_schedule="linear",
                         use_scale_shift_norm=True, dropout=0.0, rescale_timesteps=False, run_size=224),
    # consistency_models cd_imagenet64_lpips.pt / cd_imagenet64_l2.pt / ct_imagenet64.pt (launch.sh).
    "cm-imagenet64": dict(image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64,
                          attention_resolutions="32,16,8", resblock_updown=True, use_scale_shift_norm=True,
                          class_cond=True, learn_sigma=False, dropout=0.0, training_mode="consistency_distillation",
                          sigma_min=0.002, sigma_max=80.0, steps=40),
    # consistency_models cd_bedroom256_{lpips,l2}.pt, ct_bedroom256.pt, cd/ct_cat256 (launch.sh).
    "cm-lsun256": dict(image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64,
                       attention_resolutions="32,16,8", resblock_updown=True, use_scale_shift_norm=False,
                       class_cond=False, learn_sigma=False, dropout=0.0, training_mode="consistency_distillation",
                       sigma_min=0.002, sigma_max=80.0, steps=40),
}

DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


def resolve_flags(profile: str | None = None, settings: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The flags a conversion uses: the defaults, then ``profile``'s, then each ``KEY=VALUE`` of ``settings``."""
    flags = {key: default for key, (_, default) in FLAGS.items()}
    if profile is not None:
        if profile not in PROFILES:
            raise UnknownName(f"unknown profile {profile!r} (available: {', '.join(PROFILES)})")
        flags.update(PROFILES[profile])
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep:
            raise InvalidArgument(f"--set {item!r}: expected KEY=VALUE")
        if key not in FLAGS:
            raise UnknownName(f"--set {key}: unknown flag (known: {', '.join(FLAGS)})")
        try:
            flags[key] = FLAGS[key][0](value)
        except ValueError as exc:
            raise InvalidArgument(f"--set {key}={value}: {first_line(exc)}") from exc
    return flags


# --- the architecture the flags describe ----------------------------------------------------------------


class _Arch:
    """What the openai flags mean for the network: channels per level, attention levels, head widths."""

    def __init__(self, flags: dict[str, Any]):
        size = flags["image_size"]
        if flags["channel_mult"]:
            try:
                mult = tuple(float(m) for m in str(flags["channel_mult"]).split(","))
            except ValueError as exc:
                raise InvalidArgument(f"channel_mult={flags['channel_mult']!r}: expected e.g. 1,2,2,2") from exc
        elif size in DEFAULT_CHANNEL_MULT:
            mult = DEFAULT_CHANNEL_MULT[size]
        else:
            raise InvalidArgument(f"image_size={size} has no default channel_mult: --set channel_mult=1,2,2,2")
        try:
            self.attention_ds = {size // int(r) for r in str(flags["attention_resolutions"]).split(",") if r.strip()}
        except ValueError as exc:
            raise InvalidArgument(f"attention_resolutions={flags['attention_resolutions']!r}: expected e.g. "
                                  f"32,16,8") from exc
        self.flags = flags
        self.model_channels = flags["num_channels"]
        self.channels = [int(m * self.model_channels) for m in mult]
        self.levels = len(mult)
        if any(c < 32 or c % 32 for c in self.channels):  # every norm of the family is GroupNorm(32, ·)
            raise InvalidArgument(f"num_channels={self.model_channels} with channel_mult {mult} gives "
                                  f"{self.channels} channels; 32-group norms need multiples of 32")
        self.run_size = flags["run_size"] or size
        stride = 2 ** (self.levels - 1)
        if self.run_size < stride or self.run_size % stride:
            raise InvalidArgument(f"run_size={self.run_size}: {self.levels} levels halve the image "
                                  f"{self.levels - 1} times, so it must be a multiple of {stride}")
        self.blocks = flags["num_res_blocks"]
        self.updown = flags["resblock_updown"]
        self.consistency = flags["training_mode"] in CONSISTENCY_MODES
        if flags["training_mode"] and not self.consistency:
            raise InvalidArgument(f"training_mode={flags['training_mode']!r}: only consistency models convert "
                                  f"({', '.join(CONSISTENCY_MODES)})")
        # consistency_models splits qkv as (q/k/v, heads, dim) in both its attention paths.
        self.qkv_order = "new" if self.consistency or flags["use_new_attention_order"] else "legacy"
        self.out_channels = 6 if flags["learn_sigma"] else 3
        self.head_dim = self._head_dim()

    def attends(self, level: int) -> bool:
        return 2**level in self.attention_ds

    def heads(self, channels: int, upsampling: bool = False) -> int:
        f = self.flags
        if f["num_head_channels"] != -1:
            if channels % f["num_head_channels"]:
                raise InvalidArgument(f"num_head_channels={f['num_head_channels']} does not divide {channels} channels")
            return channels // f["num_head_channels"]
        heads = f["num_heads_upsample"] if upsampling and f["num_heads_upsample"] != -1 else f["num_heads"]
        if heads < 1 or channels % heads:
            raise InvalidArgument(f"num_heads={heads} does not divide {channels} channels")
        return heads

    def _head_dim(self) -> int:
        """UNet2DModel's one attention_head_dim: the common head width, or, when the original's heads differ
        in width (a fixed num_heads over levels of different widths), the gcd of the attention widths, which
        builds every attention at its full width; :attr:`head_overrides` then holds each one's true heads."""
        attention = [(dst, heads) for _, dst, kind, heads in self.module_map() if kind == "attn"]
        widths = {self.width(dst) // heads for dst, heads in attention}
        self.head_overrides = {} if len(widths) == 1 else dict(attention)
        return widths.pop() if len(widths) == 1 else math.gcd(*(self.width(dst) for dst, _ in attention))

    def width(self, module: str) -> int:
        """Channels of the diffusers block ``module`` (``down_blocks.2.…``, ``mid_block.…``, ``up_blocks.0.…``)."""
        parts = module.split(".")
        if parts[0] == "mid_block":
            return self.channels[-1]
        level = int(parts[1])
        return self.channels[level if parts[0] == "down_blocks" else self.levels - 1 - level]

    def diffusers_config(self) -> dict[str, Any]:
        down, up = [], []
        for level in range(self.levels):
            plain = "ResnetDownsampleBlock2D" if self.updown else "DownBlock2D"
            down.append("AttnDownBlock2D" if self.attends(level) else plain)
        for level in reversed(range(self.levels)):
            plain = "ResnetUpsampleBlock2D" if self.updown else "UpBlock2D"
            up.append("AttnUpBlock2D" if self.attends(level) else plain)
        return dict(
            sample_size=self.run_size, in_channels=3, out_channels=self.out_channels,
            block_out_channels=tuple(self.channels), layers_per_block=self.blocks,
            down_block_types=tuple(down), up_block_types=tuple(up),
            downsample_type="resnet" if self.updown else "conv", upsample_type="resnet" if self.updown else "conv",
            attention_head_dim=self.head_dim, norm_num_groups=32, attn_norm_num_groups=32, norm_eps=1e-5,
            resnet_time_scale_shift="scale_shift" if self.flags["use_scale_shift_norm"] else "default",
            time_embedding_dim=4 * self.model_channels, flip_sin_to_cos=True, freq_shift=0,
            num_class_embeds=NUM_CLASSES if self.flags["class_cond"] else None, dropout=self.flags["dropout"],
        )

    def module_map(self) -> list[tuple[str, str, str, int]]:
        """(openai module, diffusers module, kind, heads) in openai's registration order; kind is ``res``,
        ``attn``, ``linear``, ``conv``, ``norm`` or ``embed``; heads (0 but for ``attn``) as the original has them."""
        pairs = [("time_embed.0", "time_embedding.linear_1", "linear"),
                 ("time_embed.2", "time_embedding.linear_2", "linear")]
        if self.flags["class_cond"]:
            pairs.append(("label_emb", "class_embedding", "embed"))
        pairs.append(("input_blocks.0.0", "conv_in", "conv"))
        block = 1
        for level in range(self.levels):
            for j in range(self.blocks):
                pairs.append((f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{j}", "res"))
                if self.attends(level):
                    pairs.append((f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{j}", "attn",
                                  self.heads(self.channels[level])))
                block += 1
            if level != self.levels - 1:
                if self.updown:
                    pairs.append((f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0", "res"))
                else:
                    pairs.append((f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv", "conv"))
                block += 1
        pairs += [("middle_block.0", "mid_block.resnets.0", "res"),
                  ("middle_block.1", "mid_block.attentions.0", "attn", self.heads(self.channels[-1])),
                  ("middle_block.2", "mid_block.resnets.1", "res")]
        block = 0
        for i, level in enumerate(reversed(range(self.levels))):
            for j in range(self.blocks + 1):
                pairs.append((f"output_blocks.{block}.0", f"up_blocks.{i}.resnets.{j}", "res"))
                sub = 1
                if self.attends(level):
                    pairs.append((f"output_blocks.{block}.1", f"up_blocks.{i}.attentions.{j}", "attn",
                                  self.heads(self.channels[level], upsampling=True)))
                    sub = 2
                if level and j == self.blocks:
                    if self.updown:
                        pairs.append((f"output_blocks.{block}.{sub}", f"up_blocks.{i}.upsamplers.0", "res"))
                    else:
                        pairs.append((f"output_blocks.{block}.{sub}.conv", f"up_blocks.{i}.upsamplers.0.conv", "conv"))
                block += 1
        pairs += [("out.0", "conv_norm_out", "norm"), ("out.2", "conv_out", "conv")]
        return [p if len(p) == 4 else (*p, 0) for p in pairs]


_RES_PARTS = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
              ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]


def _is_resample(key: str) -> bool | None:
    """True for a plain up/downsampling layer's key, False for a ResBlock's, None for anything else."""
    parts = key.split(".")
    if len(parts) < 4 or parts[0] not in ("input_blocks", "output_blocks"):
        return None
    if parts[3] in ("op", "conv"):
        return True
    return False if parts[3] in ("in_layers", "emb_layers", "out_layers", "skip_connection") else None


def _hint(key: str, others: Any = ()) -> str:
    """The flag(s) to check for a mismatch at openai key ``key``; ``others``: the keys on the other side (the
    checkpoint's for a missing key, the expected ones for an unexpected key)."""
    kind = _is_resample(key)
    if kind is not None:
        module = ".".join(key.split(".")[:3]) + "."
        if any(k.startswith(module) and _is_resample(k) is (not kind) for k in others):
            return "resblock_updown or num_res_blocks"
    if key.startswith("label_emb"):
        return "class_cond"
    if key.startswith("out.2"):
        return "learn_sigma"
    if key.startswith("time_embed"):
        return "num_channels"
    if ".emb_layers." in key:
        return "use_scale_shift_norm (or num_channels, channel_mult)"
    if any(part in key for part in (".qkv.", ".proj_out.", ".norm.")):
        return "attention_resolutions (or image_size)"
    if ".op." in key or key.endswith(".conv.weight") or key.endswith(".conv.bias"):
        return "resblock_updown (or num_res_blocks)"
    return "num_channels, channel_mult, num_res_blocks, resblock_updown or image_size"


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1×1 convolution's weight as a matrix: trailing unit dimensions dropped beyond the first two."""
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def convert_state_dict(state: dict[str, torch.Tensor], arch: _Arch,
                       target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an openai state_dict onto ``target`` (a UNet2DModel's state_dict, for its names and shapes).

    Raises CheckpointError naming the first mismatch (in the checkpoint's key order, then the expected
    order for what is missing) and the flag to check.
    """
    expected: dict[str, tuple[int, ...]] = {}   # openai key -> shape
    rules: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], str]] = []  # (diffusers key, fn, openai key)
    for src, dst, kind, heads in arch.module_map():
        if kind == "res":
            parts = [(a, b) for a, b in _RES_PARTS if f"{dst}.{b}.weight" in target]
        elif kind == "attn":
            parts = [("norm", "group_norm"), ("qkv", None), ("proj_out", "to_out.0")]
        else:
            parts = [("", "")]
        for a, b in parts:
            for leaf in ("weight", "bias"):
                okey = ".".join(p for p in (src, a, leaf) if p)
                if b is None:  # fused qkv -> to_q, to_k, to_v
                    q = target[f"{dst}.to_q.{leaf}"]
                    expected[okey] = (3 * q.shape[0], *q.shape[1:])
                    for i, name in enumerate(("to_q", "to_k", "to_v")):
                        rules.append((f"{dst}.{name}.{leaf}", _qkv_part(arch, q.shape[0], heads, i), okey))
                    continue
                dkey = ".".join(p for p in (dst, b, leaf) if p)
                if dkey not in target:
                    continue  # e.g. an Embedding has no bias
                expected[okey] = tuple(target[dkey].shape)
                rules.append((dkey, _reshape_to(tuple(target[dkey].shape)), okey))
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(f"checkpoint key {key!r} is not in the network these flags describe; "
                                  f"check {_hint(key, expected)}")
        if _squeeze(tuple(value.shape)) != _squeeze(expected[key]):
            raise CheckpointError(f"checkpoint key {key!r} has shape {tuple(value.shape)}, the flags give "
                                  f"{expected[key]}; check {_hint(key)}")
    for key in expected:
        if key not in state:
            raise CheckpointError(f"checkpoint lacks key {key!r} that these flags need; check {_hint(key, state)}")
    out = {dkey: fn(state[okey].float() if state[okey].is_floating_point() else state[okey])
           for dkey, fn, okey in rules}
    missing = set(target) - set(out)
    if missing:  # a mapping bug, never the user's checkpoint
        raise CheckpointError(f"conversion left {len(missing)} weights unset, e.g. {sorted(missing)[0]!r}")
    return out


def _reshape_to(shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda w: w.reshape(shape).contiguous()


def _qkv_part(arch: _Arch, channels: int, heads: int, which: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """q (0), k (1) or v (2) of a fused qkv weight (3C, C, 1[, 1]) or bias (3C,) of an attention with
    ``heads`` heads, in diffusers' order (head h = channels h·d … h·d + d − 1)."""
    dim = channels // heads

    def take(w: torch.Tensor) -> torch.Tensor:
        w = w.reshape(3 * channels, -1)
        if arch.qkv_order == "legacy":  # rows: head, then q/k/v, then dim
            part = w.reshape(heads, 3, dim, -1)[:, which]
        else:  # rows: q/k/v, then head, then dim
            part = w.reshape(3, heads, dim, -1)[which]
        part = part.reshape(channels, -1)
        return part[:, 0].contiguous() if part.shape[1] == 1 else part.contiguous()

    return take


# --- the folder -------------------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles on stderr, around the one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike mean a file that is not a state_dict
        # torch's own first line suggests weights_only=False, which would run the file's code: not said here
        raise CheckpointError(f"cannot read {path} as a torch state_dict of tensors ({type(exc).__name__}): "
                              f"corrupt, truncated, or not saved with torch.save") from exc
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of tensors)")
    return state



def _ddpm_scheduler(flags: dict[str, Any]) -> Any:
    """improved-diffusion's β schedules as diffusers names them: linear (β from 0.0001·1000/T to
    0.02·1000/T) and cosine (= squaredcos_cap_v2, β capped at 0.999)."""
    from diffusers import DDPMScheduler

    steps, schedule = flags["diffusion_steps"], flags["noise_schedule"]
    if schedule == "linear":
        extra = dict(beta_schedule="linear", beta_start=0.0001 * 1000 / steps, beta_end=0.02 * 1000 / steps)
    elif schedule == "cosine":
        extra = dict(beta_schedule="squaredcos_cap_v2")
    else:
        raise InvalidArgument(f"noise_schedule={schedule!r}: expected linear or cosine")
    # Variance as the original samples: learned range, or improved/guided-diffusion's fixed large.
    return DDPMScheduler(num_train_timesteps=steps, variance_type="learned_range" if flags["learn_sigma"] else
                         "fixed_large", prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0, **extra)


def build(state: dict[str, torch.Tensor], flags: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(UNet2DModel holding the converted weights, scheduler, the conversion record's ``timestep_scale`` part)."""
    from diffusers import UNet2DModel

    from benchbench.models.consistency import make_scheduler

    arch = _Arch(flags)
    if arch.consistency:
        scheduler = make_scheduler(num_levels=flags["steps"], sigma_min=flags["sigma_min"],
                                   sigma_max=flags["sigma_max"], sigma_data=0.5, rho=7.0)
        scale = 1.0  # the scheduler's t(σ) = 250·ln σ is already what consistency_models feeds the network
    else:
        scheduler = _ddpm_scheduler(flags)
        scale = 1000.0 / flags["diffusion_steps"] if flags["rescale_timesteps"] else 1.0
    unet = UNet2DModel(**arch.diffusers_config())
    unet.load_state_dict(convert_state_dict(state, arch, unet.state_dict()), strict=True)
    record: dict[str, Any] = {"timestep_scale": scale}
    if arch.head_overrides:  # heads are not in a saved UNet's config: load_unet sets them from the record
        record["attention_heads"] = arch.head_overrides
    return unet.eval(), scheduler, record


def convert(checkpoint: str | Path, out: str | Path, profile: str | None = None,
            settings: list[str] | tuple[str, ...] = ()) -> Path:
    """Convert ``checkpoint`` into the folder ``out`` (which must not exist); returns ``out``.

    Nothing is written unless the whole conversion succeeds: the folder is assembled beside ``out`` and
    renamed into place.
    """
    from diffusers import ConsistencyModelPipeline, DDPMPipeline

    checkpoint, out = Path(checkpoint), Path(out)
    flags = resolve_flags(profile, settings)
    if out.exists():
        raise InvalidArgument(f"--out {out} already exists; give a new folder")
    state = _read_checkpoint(checkpoint)
    _quiet()
    unet, scheduler, record = build(state, flags)
    pipeline = (ConsistencyModelPipeline if flags["training_mode"] else DDPMPipeline)(unet=unet, scheduler=scheduler)
    with new_folder(out) as tmp:
        pipeline.save_pretrained(tmp)
        record["source"] = {"checkpoint": checkpoint.name, "sha256": file_sha256(checkpoint), "profile": profile,
                            "flags": flags}
        (tmp / CONVERSION).write_text(json.dumps(record, indent=2) + "\n")
    return out

