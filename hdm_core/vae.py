"""HDM's VAE: the SDXL-layout ``AutoencoderKL`` (EQ-SDXL-VAE) in plain PyTorch.

Module and parameter names are diffusers' (``encoder.down_blocks.0.resnets.0.conv1``,
``decoder.mid_block.attentions.0.to_q`` …), which is how HDM checkpoints store it under
``vae.``; files in the original LDM layout (``encoder.down.0.block.0`` …, as ComfyUI and
A1111 save VAEs) are renamed on load. No diffusers dependency: the blocks are small.

The model maps images in ``[-1, 1]`` to VAE latents and back. HDM works on *normalised*
latents (:mod:`hdm_core.latents`); :meth:`AutoencoderKL.encode_images` and
:meth:`AutoencoderKL.decode_latents` include that normalisation and the ``[0, 1]`` image
range, so callers (pipeline, trainer, nodes) never repeat it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import latents as latent_stats
from .checkpoint import (
    CheckpointError,
    _dominant_float_dtype,
    _file_dtype,
    _shapes,
    describe_state_dict,
    key_diff,
    read_state_dict,
)

VAE_PREFIXES = ("vae.", "first_stage_model.", "")
_SENTINELS = ("decoder.conv_in.weight", "post_quant_conv.weight")


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of an SD/SDXL-style ``AutoencoderKL`` (diffusers config field names)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"VAE channel count {c} is not a multiple of norm_num_groups={self.norm_num_groups}")

    @property
    def scale(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.block_out_channels) - 1)


#: EQ-SDXL-VAE / SDXL VAE: 83,653,863 parameters.
SDXL_VAE = VAEConfig()


def _kw(dtype, device) -> dict[str, Any]:
    return {"dtype": dtype, "device": device}


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a 1×1-conv shortcut when channels change."""

    def __init__(self, cin: int, cout: int, groups: int, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = _kw(dtype, device)
        self.norm1 = operations.GroupNorm(groups, cin, eps=1e-6, **kw)
        self.conv1 = operations.Conv2d(cin, cout, 3, padding=1, **kw)
        self.norm2 = operations.GroupNorm(groups, cout, eps=1e-6, **kw)
        self.conv2 = operations.Conv2d(cout, cout, 3, padding=1, **kw)
        self.conv_shortcut = operations.Conv2d(cin, cout, 1, **kw) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """Single-head spatial self-attention of the mid block (diffusers ``Attention`` names)."""

    def __init__(self, channels: int, groups: int, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = _kw(dtype, device)
        self.group_norm = operations.GroupNorm(groups, channels, eps=1e-6, **kw)
        self.to_q = operations.Linear(channels, channels, **kw)
        self.to_k = operations.Linear(channels, channels, **kw)
        self.to_v = operations.Linear(channels, channels, **kw)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(n)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one zero row/column at the bottom/right (diffusers/LDM)."""

    def __init__(self, channels: int, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0, **_kw(dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, **_kw(dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = {"operations": operations, "dtype": dtype, "device": device}
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, **kw) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownBlock(nn.Module):
    def __init__(self, cin, cout, layers, groups, downsample: bool, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = {"operations": operations, "dtype": dtype, "device": device}
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, **kw) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout, **kw)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpBlock(nn.Module):
    def __init__(self, cin, cout, layers, groups, upsample: bool, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = {"operations": operations, "dtype": dtype, "device": device}
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, **kw) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout, **kw)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = {"operations": operations, "dtype": dtype, "device": device}
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = operations.Conv2d(cfg.in_channels, ch[0], 3, padding=1, **_kw(dtype, device))
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < len(ch) - 1, **kw) for i in range(len(ch))
        )
        self.mid_block = MidBlock(ch[-1], g, **kw)
        self.conv_norm_out = operations.GroupNorm(g, ch[-1], eps=1e-6, **_kw(dtype, device))
        self.conv_out = operations.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1, **_kw(dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        kw = {"operations": operations, "dtype": dtype, "device": device}
        ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = operations.Conv2d(cfg.latent_channels, ch[0], 3, padding=1, **_kw(dtype, device))
        self.mid_block = MidBlock(ch[0], g, **kw)
        self.up_blocks = nn.ModuleList(
            UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < len(ch) - 1, **kw) for i in range(len(ch))
        )
        self.conv_norm_out = operations.GroupNorm(g, ch[-1], eps=1e-6, **_kw(dtype, device))
        self.conv_out = operations.Conv2d(ch[-1], cfg.out_channels, 3, padding=1, **_kw(dtype, device))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """SD/SDXL ``AutoencoderKL``: images ``[-1, 1]`` ⇄ diagonal-Gaussian latents (÷8 spatially)."""

    def __init__(self, config: VAEConfig = SDXL_VAE, operations=nn, dtype=None, device=None) -> None:
        super().__init__()
        self.config = config
        kw = _kw(dtype, device)
        self.encoder = Encoder(config, operations, **kw)
        self.decoder = Decoder(config, operations, **kw)
        c = config.latent_channels
        self.quant_conv = operations.Conv2d(2 * c, 2 * c, 1, **kw)
        self.post_quant_conv = operations.Conv2d(c, c, 1, **kw)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    # ------------------------------------------------------------------ raw VAE space
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)`` for images in ``[-1, 1]`` (logvar clamped to [-30, 20])."""
        h = self.quant_conv(self.encoder(images.to(self.device, self.dtype)))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(
        self,
        images: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """VAE latents for images in ``[-1, 1]``: a posterior sample (training) or its mean.

        ``generator`` may be one generator for the batch or one per image; per-image
        generators make each image's sample independent of what else is in the batch
        (so batching, data-parallel sharding and resumed runs draw the same latents).
        """
        mean, logvar = self.encode_moments(images)
        if not sample:
            return mean
        if generator is None or isinstance(generator, torch.Generator):
            noise = _randn(mean.shape, generator, mean)
        else:
            generator = list(generator)
            if len(generator) != mean.shape[0]:
                raise ValueError(f"got {len(generator)} generators for {mean.shape[0]} images; give one per image")
            noise = torch.cat([_randn((1, *mean.shape[1:]), g, mean) for g in generator])
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in (roughly) ``[-1, 1]`` from VAE latents."""
        return self.decoder(self.post_quant_conv(z.to(self.device, self.dtype)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images, sample=False))

    # ------------------------------------------------------------------ HDM space
    def encode_images(
        self,
        images: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        chunk: int = 4,
    ) -> torch.Tensor:
        """Normalised HDM latents for images in ``[0, 1]`` ``[B, 3, H, W]`` (H, W multiples of 8).

        ``sample=True`` draws from the posterior as HDM's training did; chunks of
        ``chunk`` images bound peak memory the same way. ``generator``: see :meth:`encode`.
        """
        s = self.config.scale
        if images.shape[-1] % s or images.shape[-2] % s:
            raise ValueError(f"image size {images.shape[-2]}x{images.shape[-1]} is not a multiple of {s}")
        gens: list = [generator] * len(images.split(chunk))
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = list(generator)
            if len(generator) != images.shape[0]:
                raise ValueError(f"got {len(generator)} generators for {images.shape[0]} images; give one per image")
            gens = [generator[i : i + chunk] for i in range(0, len(generator), chunk)]
        parts = [self.encode(x * 2 - 1, sample, g) for x, g in zip(images.split(chunk), gens)]
        return latent_stats.normalize(torch.cat(parts).float())

    def decode_latents(self, z: torch.Tensor, tile: int | None = None, overlap: int = 16) -> torch.Tensor:
        """Images in ``[0, 1]`` from normalised HDM latents; ``tile`` (latent cells) decodes in tiles."""
        z_vae = latent_stats.denormalize(z.float())
        if tile is not None:
            images = tiled_decode(self.decode, z_vae, tile, overlap, self.config.scale)
        else:
            images = torch.cat([self.decode(part) for part in z_vae.split(1)])
        return (images.float() / 2 + 0.5).clamp(0, 1)


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) on ``generator``'s device (CPU generators give the same draw on every device), moved to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


# --------------------------------------------------------------------------- tiling
def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, fade_in: int, fade_out: int, device, dtype) -> torch.Tensor:
    """1 in the middle, linear ramps (never exactly 0) over ``fade_in``/``fade_out`` samples at the ends."""
    w = torch.ones(length, device=device, dtype=dtype)
    if fade_in:
        w[:fade_in] = (torch.arange(fade_in, device=device, dtype=dtype) + 0.5) / fade_in
    if fade_out:
        w[length - fade_out :] = torch.minimum(
            w[length - fade_out :], (torch.arange(fade_out, 0, -1, device=device, dtype=dtype) - 0.5) / fade_out
        )
    return w


@torch.no_grad()
def tiled_decode(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    tile: int = 64,
    overlap: int = 16,
    scale: int = 8,
) -> torch.Tensor:
    """Decode ``z`` ``[B, C, h, w]`` in overlapping ``tile``×``tile`` latent tiles and blend them.

    Every tile is decoded on its own (memory ∝ tile size), and each output pixel is the
    weighted mean of the tiles covering it, with weights ramping linearly across each
    overlap, so tile borders fade into each other instead of showing seams. (A VAE decoder
    is not local — GroupNorm statistics and the mid-block attention see the whole input —
    so tiles only approximate the full decode; larger tiles and overlaps approximate it
    better.)
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    b, _, h, w = z.shape
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    out = weight = None
    for y in ys:
        for x in xs:
            th, tw = min(tile, h - y), min(tile, w - x)
            pix = decode(z[:, :, y : y + th, x : x + tw]).float()
            if out is None:
                out = torch.zeros(b, pix.shape[1], h * scale, w * scale, device=pix.device)
                weight = torch.zeros(1, 1, h * scale, w * scale, device=pix.device)
            # Fade only on sides that touch another tile, over the part shared with it.
            fy0 = (min(ys[ys.index(y) - 1] + tile, h) - y) * scale if y != ys[0] else 0
            fy1 = (y + th - ys[ys.index(y) + 1]) * scale if y != ys[-1] else 0
            fx0 = (min(xs[xs.index(x) - 1] + tile, w) - x) * scale if x != xs[0] else 0
            fx1 = (x + tw - xs[xs.index(x) + 1]) * scale if x != xs[-1] else 0
            wy = _ramp(th * scale, fy0, fy1, pix.device, pix.dtype)
            wx = _ramp(tw * scale, fx0, fx1, pix.device, pix.dtype)
            wt = wy[:, None] * wx[None, :]
            sl = (slice(None), slice(None), slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale))
            out[sl] += pix * wt
            weight[sl] += wt
    return out / weight


# --------------------------------------------------------------------------- loading
def find_vae_prefix(keys) -> str | None:
    """The prefix under which VAE keys live (diffusers or LDM layout), or ``None``."""
    keyset = set(keys)
    for prefix in VAE_PREFIXES:
        if all(prefix + s in keyset for s in _SENTINELS):
            return prefix
    for key in sorted(keyset):
        if key.endswith("." + _SENTINELS[0]):
            prefix = key[: -len(_SENTINELS[0])]
            if prefix + _SENTINELS[1] in keyset:
                return prefix
    return None


def is_ldm_layout(keys) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for k in keys)


def ldm_to_diffusers_key(key: str, num_levels: int) -> str:
    """Rename one LDM-layout VAE key (``decoder.up.3.block.0…``) to diffusers' layout."""
    k = key
    m = re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)", k)
    if m:
        k = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    m = re.match(r"encoder\.down\.(\d+)\.downsample\.(.*)", k)
    if m:
        k = f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    m = re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", k)
    if m:
        k = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    m = re.match(r"decoder\.up\.(\d+)\.upsample\.(.*)", k)
    if m:
        k = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    m = re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(.*)", k)
    if m:
        k = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.*)", k)
    if m:
        name = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[m[2]]
        k = f"{m[1]}.mid_block.attentions.0.{name}.{m[3]}"
    k = k.replace(".nin_shortcut.", ".conv_shortcut.")
    k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
    return k


def infer_vae_config(shapes: Mapping[str, list[int]], norm_num_groups: int = 32) -> VAEConfig:
    """VAE architecture from the shapes of a prefix-free, diffusers-layout state dict."""

    def shape(key: str) -> list[int]:
        if key not in shapes:
            raise CheckpointError(f"cannot read the VAE architecture: tensor '{key}' is missing from the file")
        return list(shapes[key])

    channels = []
    while f"encoder.down_blocks.{len(channels)}.resnets.0.conv1.weight" in shapes:
        channels.append(shape(f"encoder.down_blocks.{len(channels)}.resnets.0.conv1.weight")[0])
    if not channels:
        raise CheckpointError("cannot read the VAE architecture: no encoder.down_blocks found")
    layers = 0
    while f"encoder.down_blocks.0.resnets.{layers}.conv1.weight" in shapes:
        layers += 1
    try:
        return VAEConfig(
            in_channels=shape("encoder.conv_in.weight")[1],
            out_channels=shape("decoder.conv_out.weight")[0],
            block_out_channels=tuple(channels),
            layers_per_block=layers,
            latent_channels=shape("decoder.conv_in.weight")[1],
            norm_num_groups=norm_num_groups,
        )
    except ValueError as exc:
        raise CheckpointError(f"cannot read the VAE architecture: {exc}") from exc


def load_vae(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    norm_num_groups: int = 32,
    allow_pickle: bool = False,
    operations: Any = None,
) -> AutoencoderKL:
    """Load the VAE from an HDM checkpoint (``vae.*``), a separate VAE file/folder or a state dict.

    Diffusers layout (HDM, EQ-SDXL-VAE's own files) and LDM layout (``first_stage_model.*``
    or bare, as ComfyUI/A1111 VAEs are saved) are both accepted. The architecture is read
    off the shapes; loading is strict, with a readable key diff when something does not
    match. ``dtype`` defaults to the file's own. Returned in eval mode with no gradients.
    """
    sd = read_state_dict(source, allow_pickle=allow_pickle)
    prefix = find_vae_prefix(sd)
    if prefix is None:
        where = f"{source}: " if not isinstance(source, Mapping) else ""
        raise CheckpointError(
            f"{where}no VAE weights found (expected 'vae.decoder.conv_in.weight' or 'decoder.conv_in.weight'); "
            f"{describe_state_dict(list(sd))}"
        )
    names = {k[len(prefix):]: k for k in sd if k.startswith(prefix)}
    if prefix == "":  # a bare file: keep the VAE's own modules only
        names = {k: v for k, v in names.items() if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")}
    all_shapes = _shapes(sd)
    shapes = {short: all_shapes[full] for short, full in names.items()}
    reshape_attn = set()
    if is_ldm_layout(names):
        levels = 1 + max(int(m[1]) for k in names if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        renamed = {}
        for short, full in names.items():
            new = ldm_to_diffusers_key(short, levels)
            renamed[new] = full
            if ".attentions.0.to_" in new and new.endswith(".weight") and len(shapes[short]) == 4:
                reshape_attn.add(new)
        shapes = {new: (all_shapes[full][:2] if new in reshape_attn else all_shapes[full]) for new, full in renamed.items()}
        names = renamed
    config = infer_vae_config(shapes, norm_num_groups)

    with torch.device("meta"):
        model = AutoencoderKL(config, operations=operations or nn, device="meta")
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    problems = key_diff(expected, shapes)
    if problems:
        raise CheckpointError(
            f"the VAE weights (prefix '{prefix}') do not match an SD/SDXL AutoencoderKL: {problems}. "
            "HDM uses EQ-SDXL-VAE, which the released HDM checkpoint already contains (its vae.* keys)"
        )
    if dtype is None:
        dtype = _dominant_float_dtype([_file_dtype(sd, full) for full in names.values()])
    device = torch.device(device) if device is not None else torch.device("cpu")
    loaded = {}
    for short, full in names.items():
        t = sd[full]
        if short in reshape_attn:
            t = t.reshape(t.shape[0], t.shape[1])
        loaded[short] = t.to(device=device, dtype=dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval().requires_grad_(False)


__all__ = [
    "AutoencoderKL",
    "SDXL_VAE",
    "VAEConfig",
    "find_vae_prefix",
    "infer_vae_config",
    "ldm_to_diffusers_key",
    "load_vae",
    "tiled_decode",
]
