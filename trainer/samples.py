"""Preview images during training: HDM's flow sampler on the adapted model.

Prompts are encoded once; each preview uses a fixed seed so images are comparable across
steps. Needs a text encoder and a VAE decoder; without either, previews are skipped (one
log line), never an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hdm_core.flow import cfg_model, flow_timesteps, get_sampler, seeded_noise
from hdm_core.latents import VAE_SCALE, denormalize
from hdm_core.train.data import split_text_output

from .config import SampleSection
from .encoders import Encoders

log = logging.getLogger(__name__)


def save_png(pixels: torch.Tensor, path: Path) -> Path:
    """Save ``[3, H, W]`` pixels in [-1, 1] as PNG (atomically)."""
    import os
    import tempfile

    from PIL import Image

    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def make_sampler(
    cfg: SampleSection,
    encoders: Encoders,
    out_dir: Path,
    name: str,
    device: torch.device,
    input_dtype: torch.dtype,
    amp_dtype: torch.dtype | None,
) -> Callable[[int, nn.Module], None] | None:
    """A ``sample(step, model)`` callback for the engine, or None when previews are impossible."""
    if not cfg.every:
        return None
    if encoders.decode_latents is None or encoders.encode_text is None:
        missing = "VAE decoder" if encoders.decode_latents is None else "text encoder"
        log.warning("sample images are skipped: no %s is configured ([encoders])", missing)
        return None
    with torch.no_grad():
        conds = split_text_output(encoders.encode_text(list(cfg.prompts)), len(cfg.prompts))
        (neg,) = split_text_output(encoders.encode_text([cfg.negative]), 1)
    sampler = get_sampler(cfg.sampler)
    h, w = cfg.height // VAE_SCALE, cfg.width // VAE_SCALE

    def sample(step: int, model: nn.Module) -> None:
        for i, ctx in enumerate(conds):
            noise = seeded_noise((1, 4, h, w), cfg.seed + i, device=device, dtype=input_dtype)
            cond = {"ctx": ctx[None].to(device, input_dtype), "tread_rate": 0.0}
            uncond = {"ctx": neg[None].to(device, input_dtype), "tread_rate": 0.0}
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                z = sampler(cfg_model(model, cond, uncond, cfg.cfg), noise, flow_timesteps(cfg.steps))
                pixels = encoders.decode_latents(denormalize(z.float()))
            save_png(pixels[0], out_dir / f"{name}-step{step:06d}-{i:02d}.png")

    return sample
