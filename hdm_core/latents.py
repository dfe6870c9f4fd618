"""EQ-SDXL-VAE latent statistics and the normalisation HDM was trained in.

The model works on ``z = (z_vae − mean) / std`` per channel (scale factor 1). These numbers
come from the EQ-SDXL-VAE config; every front-end (ComfyUI latent format, headless
pipeline, trainer) takes them from here.
"""

from __future__ import annotations

import torch

LATENT_CHANNELS = 4
VAE_SCALE = 8  # pixels per latent cell
LATENTS_MEAN = (-3.865960634760459, -1.3353925720045965, 0.8353661802812418, 0.909888159310023)
LATENTS_STD = (10.036514488374861, 6.848430044716239, 7.213817552213277, 5.591315799887989)


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, LATENT_CHANNELS) + (1,) * (like.ndim - 2)
    mean = torch.tensor(LATENTS_MEAN, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(LATENTS_STD, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def normalize(z_vae: torch.Tensor) -> torch.Tensor:
    """VAE latent → model space: ``(z − mean) / std``."""
    mean, std = _stats(z_vae)
    return (z_vae - mean) / std


def denormalize(z: torch.Tensor) -> torch.Tensor:
    """Model space → VAE latent: ``z · std + mean``."""
    mean, std = _stats(z)
    return z * std + mean
