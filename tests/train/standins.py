"""Tiny deterministic stand-ins for the training tests: XUT, VAE, text encoder, image folders.

The stand-in encoders have the real interfaces (``encode(pixels in [-1, 1]) → VAE latents
[B, 4, H/8, W/8]`` with EQ-SDXL-like statistics, ``decode``, ``encode(list[str]) → list of
[T_i, D]``) and ``cache_id``s, so the data path, caches and CLI run exactly as with the real
VAE and Qwen3. Also importable by the CLI tests as ``standins:load_tiny_vae`` etc.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from hdm_core import XUT, XUTConfig
from hdm_core.latents import LATENTS_MEAN, LATENTS_STD

CTX_DIM = 16


def tiny_config() -> XUTConfig:
    return XUTConfig(
        dim=32, ctx_dim=CTX_DIM, ctx_size=4, heads=2, dim_head=16, mlp_dim=64, depth=1, enc_blocks=1, dec_blocks=2,
        tread_config={"prev_trns_depth": 1, "post_trns_depth": 1, "dropout_ratio": 0.5},
    )  # fmt: skip


def tiny_xut(seed: int = 0, dtype: torch.dtype = torch.float32) -> XUT:
    """A tiny XUT with every weight random (no zero-initialised output layer)."""
    gen = torch.Generator().manual_seed(seed)
    model = XUT(tiny_config(), dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rope" in name:
                continue  # keep the log-spaced RoPE frequencies
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif name.endswith("norm.weight") or (name.startswith("shared_adaln") and ".0." in name):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


class TinyVAE:
    """Average-pool ×8 + a fixed 3→4 channel mix, scaled to EQ-SDXL-VAE latent statistics."""

    cache_id = "tiny-vae-v1"

    def __init__(self, device=None, dtype=None) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.mix = torch.randn(4, 3, generator=gen)
        self.unmix = torch.linalg.pinv(self.mix)
        self.mean = torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1)
        self.std = torch.tensor(LATENTS_STD).view(1, 4, 1, 1)
        self.calls = 0

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if pixels.min() < -1.0001 or pixels.max() > 1.0001:
            raise ValueError("pixels must be in [-1, 1]")
        pooled = F.avg_pool2d(pixels.float(), 8)
        z = torch.einsum("oc,bchw->bohw", self.mix, pooled) * 2
        return z * self.std + self.mean

    __call__ = encode

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents.float() - self.mean) / self.std / 2
        rgb = torch.einsum("co,bohw->bchw", self.unmix, z)
        return F.interpolate(rgb, scale_factor=8, mode="nearest").clamp(-1, 1)


class TinyTextEncoder:
    """One ``CTX_DIM`` vector per comma-separated tag, from a hash-seeded table."""

    cache_id = "tiny-te-v1"

    def __init__(self, device=None, dtype=None) -> None:
        gen = torch.Generator().manual_seed(99)
        self.table = torch.randn(997, CTX_DIM, generator=gen)
        self.calls = 0

    def encode(self, captions: list[str]) -> list[torch.Tensor]:
        self.calls += 1
        out = []
        for caption in captions:
            tags = [t.strip() for t in caption.split(",") if t.strip()]
            ids = [int(hashlib.md5(t.encode()).hexdigest(), 16) % 997 for t in tags]
            out.append(self.table[ids] if ids else torch.zeros(0, CTX_DIM))
        return out

    __call__ = encode


def load_tiny_vae(device=None, dtype=None) -> TinyVAE:
    return TinyVAE(device, dtype)


def load_tiny_te(device=None, dtype=None) -> TinyTextEncoder:
    return TinyTextEncoder(device, dtype)


TAGS = ["1girl", "solo", "smile", "red eyes", "long hair", "outdoors", "sky", "blue dress", "hat", "flower"]


def write_image_folder(
    root: Path,
    sizes: list[tuple[int, int]],
    *,
    captions: bool = True,
    seed: int = 0,
) -> list[Path]:
    """PNG images of the given (width, height) with smooth random colours, plus .txt captions."""
    from PIL import Image

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        small = torch.rand(3, max(1, h // 16), max(1, w // 16), generator=gen)
        img = F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        path = root / f"img{i:03d}.png"
        Image.fromarray(arr).save(path)
        if captions:
            tags = rng.sample(TAGS[1:], 3)
            path.with_suffix(".txt").write_text(f"1girl ||| {', '.join(tags)}", encoding="utf-8")
        paths.append(path)
    return paths
