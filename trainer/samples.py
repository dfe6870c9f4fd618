"""Preview images during training: HDM's inference recipe on the model with the adapter applied.

Each preview is what :class:`hdm_core.pipeline.HDMPipeline` would draw for the same
settings (:func:`hdm_core.train.preview.draw_preview_latent`, shared with the ComfyUI
training node), prompts encoded inference-style once up front, a fixed seed per prompt so
images are comparable across steps — decoded by the configured VAE and written with
:func:`hdm_core.images.save_png`, every generation parameter (plus the step) in the PNG's
metadata. Without a text encoder or a VAE decoder previews are skipped (one log line),
never an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hdm_core.images import save_png
from hdm_core.pipeline import GenerationParams
from hdm_core.train.preview import draw_preview_latent

from .config import SampleSection
from .encoders import Encoders

log = logging.getLogger(__name__)


def preview_params(cfg: SampleSection) -> list[GenerationParams]:
    """One :class:`GenerationParams` per preview prompt (prompt ``i`` uses seed ``seed + i``)."""
    return [
        GenerationParams(
            prompt=p, negative=cfg.negative, width=cfg.width, height=cfg.height, steps=cfg.steps, cfg=cfg.cfg,
            sampler=cfg.sampler, seed=cfg.seed + i,
        ).validate()
        for i, p in enumerate(cfg.prompts)
    ]  # fmt: skip


def make_sampler(
    cfg: SampleSection,
    encoders: Encoders,
    out_dir: Path,
    name: str,
    device: torch.device,
    input_dtype: torch.dtype,
    amp_dtype: torch.dtype | None,
) -> Callable[[int, nn.Module], None] | None:
    """A ``sample(step, model)`` callback for the engine, or None when previews are off or impossible."""
    if not cfg.every:
        return None
    if encoders.decode_latents is None or (encoders.encode_text is None and encoders.encode_prompts is None):
        missing = "VAE decoder" if encoders.decode_latents is None else "text encoder"
        log.warning("sample images are skipped: no %s is configured ([model] / [encoders])", missing)
        return None
    try:
        params = preview_params(cfg)
    except ValueError as exc:
        from .config import ConfigError

        raise ConfigError(f"[sample]: {exc}") from exc
    with torch.no_grad():
        contexts = encoders.prompt_contexts([p.prompt for p in params])
        (negative,) = encoders.prompt_contexts([cfg.negative])
    decode = encoders.decode_latents

    def sample(step: int, model: nn.Module) -> None:
        for i, (p, ctx) in enumerate(zip(params, contexts)):
            z = draw_preview_latent(model, ctx, negative, p, device, input_dtype, amp_dtype)
            images = decode(z)
            meta = {**p.to_metadata(), "step": step, "adapter": name}
            save_png(images[0], out_dir / f"{name}-step{step:06d}-{i:02d}.png", meta)

    return sample
