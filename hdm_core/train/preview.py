"""Preview images during training: HDM's inference recipe on the model being trained.

One place for what the headless trainer (``trainer/samples.py``) and the ComfyUI training
node draw: the same pieces as :class:`hdm_core.pipeline.HDMPipeline`
(:func:`~hdm_core.pipeline.initial_noise`, :func:`~hdm_core.pipeline.guidance_kwargs`,
:func:`~hdm_core.pipeline.sample_latents`) with a fixed seed, so previews are comparable
across steps. The engine calls the preview hook between optimiser steps under
``torch.no_grad()`` with the adapter in eval mode; this module also puts the model in eval
mode (inference routes no TREAD tokens by default) and restores every module's mode after.
Its noise comes from its own seeded generator, never the global RNG, so drawing previews
does not change the trained adapter.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..pipeline import GenerationParams, guidance_kwargs, initial_noise, sample_latents
from .loop import preserved_model_state


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for sampling; the model's training state is put back after (``preserved_model_state``)."""
    with preserved_model_state(model):
        model.eval()
        yield


def draw_preview_latent(
    model: nn.Module,
    context: torch.Tensor,
    negative: torch.Tensor,
    params: GenerationParams,
    device: torch.device,
    input_dtype: torch.dtype = torch.float32,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One preview: a clean model-space latent ``[1, 4, h, w]`` (float32) for ``params``.

    ``context`` / ``negative`` are ``[T, D]`` text features (``T = 0`` is HDM's empty
    prompt). At CFG 1 the negative pass cancels out and is skipped, as in the pipeline.
    """
    guided = params.cfg != 1.0
    cond, uncond = guidance_kwargs(context[None].to(device, input_dtype), negative[None].to(device, input_dtype), params, device)
    noise = initial_noise(1, params.width, params.height, params.seed, device=device)
    with eval_mode(model), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        z = sample_latents(model, noise, cond, uncond if guided else None, params)
    return z.float()


__all__ = ["draw_preview_latent", "eval_mode"]
