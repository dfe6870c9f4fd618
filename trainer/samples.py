"""Preview images during training: HDM's inference recipe on the model with the adapter applied.

Each preview is what :class:`hdm_core.pipeline.HDMPipeline` would draw for the same
settings — the same pieces (:func:`~hdm_core.pipeline.initial_noise`,
:func:`~hdm_core.pipeline.guidance_kwargs`, :func:`~hdm_core.pipeline.sample_latents`),
prompts encoded inference-style once up front, a fixed seed per prompt so images are
comparable across steps — decoded by the configured VAE and written with
:func:`hdm_core.images.save_png`, every generation parameter (plus the step) in the PNG's
metadata. Without a text encoder or a VAE decoder previews are skipped (one log line),
never an error.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from hdm_core.images import save_png
from hdm_core.pipeline import GenerationParams, guidance_kwargs, initial_noise, sample_latents

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


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for sampling (no TREAD routing by default, as in inference), modes restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


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
            guided = p.cfg != 1.0  # at CFG 1 the negative pass cancels out (as in the pipeline)
            cond, uncond = guidance_kwargs(
                ctx[None].to(device, input_dtype), negative[None].to(device, input_dtype), p, device
            )
            noise = initial_noise(1, p.width, p.height, p.seed, device=device)
            with _eval_mode(model), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                z = sample_latents(model, noise, cond, uncond if guided else None, p)
            images = decode(z.float())
            meta = {**p.to_metadata(), "step": step, "adapter": name}
            save_png(images[0], out_dir / f"{name}-step{step:06d}-{i:02d}.png", meta)

    return sample
