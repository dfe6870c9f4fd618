"""Sample images in HDM Train LyCORIS's progress preview, every N training steps.

Drawn the way the headless trainer draws its previews
(:func:`hdm_core.train.preview.draw_preview_latent`: HDM's inference recipe on the model
being trained, adapter applied, fixed seed) from the first training caption as the node
encoded it, with HDM's empty negative, at the size of the first training image. Decoded by
the connected VAE, or — training from latents without a VAE — by the model's latent-to-RGB
factors, the way ComfyUI's own sampler previews are made. Previews use their own seeded
noise, so turning them on does not change the trained adapter.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image
from torch import nn

import latent_preview

from ..hdm_core.latents import VAE_SCALE
from ..hdm_core.pipeline import GenerationParams
from ..hdm_core.train.loop import AMP_DTYPES
from ..hdm_core.train.preview import draw_preview_latent
from .train_data import images_to_pil

#: Sampling steps and CFG of a preview (the headless trainer's [sample] defaults).
PREVIEW_STEPS = 20
PREVIEW_CFG = 3.0


def preview_params(latent: torch.Tensor, seed: int) -> GenerationParams:
    """Euler at :data:`PREVIEW_STEPS` steps, CFG :data:`PREVIEW_CFG`, the size of ``latent [4, h, w]``."""
    h, w = latent.shape[-2:]
    return GenerationParams(width=w * VAE_SCALE, height=h * VAE_SCALE, steps=PREVIEW_STEPS, cfg=PREVIEW_CFG, seed=int(seed))


class TrainingPreview:
    """The engine's ``sample(step, model)`` hook: draw, decode, hand ``("JPEG", image, size)`` to ``send``."""

    def __init__(
        self,
        model: Any,
        vae: Any | None,
        context: torch.Tensor,
        latent: torch.Tensor,
        seed: int,
        device: torch.device,
        mixed_precision: str,
        send: Callable[[int, tuple], None],
    ) -> None:
        self.model, self.vae, self.send = model, vae, send
        self.context = context.float()
        self.params = preview_params(latent, seed)
        self.device = device
        self.amp_dtype = AMP_DTYPES.get(mixed_precision)

    def to_image(self, z: torch.Tensor) -> Image.Image:
        """A model-space latent ``[1, 4, h, w]`` → PIL, by the VAE when connected, else latent-to-RGB."""
        if self.vae is not None:
            return images_to_pil(self.vae.decode(self.model.model.process_latent_out(z.cpu())))[0]
        fmt = self.model.model.latent_format
        return latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias).decode_latent_to_preview(z.cpu())

    def __call__(self, step: int, xut: nn.Module) -> None:
        z = draw_preview_latent(xut, self.context, self.context[:0], self.params, self.device, amp_dtype=self.amp_dtype)
        self.send(step, ("JPEG", self.to_image(z), latent_preview.MAX_PREVIEW_RESOLUTION))


__all__ = ["PREVIEW_CFG", "PREVIEW_STEPS", "TrainingPreview", "preview_params"]
