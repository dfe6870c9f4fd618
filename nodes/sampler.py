"""HDM Sampler: flow-matching sampling over ComfyUI's own machinery.

Noise is ComfyUI's (``comfy.sample.prepare_noise``, identical to ``hdm_core.flow.seeded_noise``),
sampling runs through ``comfy.sample.sample_custom`` (CFGGuider + KSAMPLER), so progress bar,
live previews, interrupt, model patches and every ComfyUI sampler work as in KSampler. The
default scheduler is the reference's exact uniform grid, ``hdm_core.flow.flow_timesteps``;
ComfyUI's schedulers are offered too. Camera and TREAD gammas come from the conditioning
(HDM Camera, HDM TREAD Guidance).
"""

from __future__ import annotations

import torch

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..hdm_core.flow import flow_timesteps
from ..hdm_core.latents import LATENT_CHANNELS
from .v3 import check_options, io, schema

HDM_SCHEDULER = "hdm_uniform"


def hdm_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The ``steps + 1`` sigmas (= flow times t) to sample with, ending at 0.

    ``hdm_uniform`` is the reference's Euler grid 1, 1 − 1/N, …, 0 warped by the model's
    shift (1 unless a ModelSampling* node sets one); other names are ComfyUI's schedulers.
    ``denoise`` < 1 keeps the last steps of a longer schedule, as KSampler does.
    """
    if denoise <= 0.0:
        return torch.FloatTensor([])
    total = steps if denoise >= 1.0 else int(steps / denoise)
    model_sampling = model.get_model_object("model_sampling")
    if scheduler == HDM_SCHEDULER:
        shift = float(getattr(model_sampling, "shift", 1.0) or 1.0)
        sigmas = flow_timesteps(total, shift).to(torch.float32)
    else:
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu().to(torch.float32)
    return sigmas[-(steps + 1):]


def check_hdm_latent(samples: torch.Tensor) -> None:
    """Fail early, with the fix, on latents HDM cannot denoise: the channels must be the EQ-SDXL-VAE's.

    Any size works (the model pads to its 2x2 patch grid and crops back); a latent smaller than
    one patch is refused by the model family itself (nodes/model.py), for every sampler node.
    """
    if samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"HDM Sampler: expected an image latent with {LATENT_CHANNELS} channels (Empty Latent Image or VAE Encode with the "
            f"EQ-SDXL-VAE), got a latent of shape {list(samples.shape)}"
        )


class HDMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMSampler",
            display_name="HDM Sampler",
            description="Samples HDM with flow matching: the reference's schedule and noise on ComfyUI's samplers, with progress, previews and interrupt.",
            search_aliases=["hdm ksampler", "anime sampler", "flow matching sampler", "hdm txt2img"],
            inputs=[
                io.Model.Input("model", tooltip="The HDM model (from HDM Checkpoint Loader, optionally through LoRA or ModelSampling nodes)."),
                io.Conditioning.Input("positive", tooltip="What the image should show (HDM Text Encode), optionally through HDM Camera / HDM TREAD Guidance."),
                io.Conditioning.Input("negative", tooltip="What to steer away from; an empty prompt is HDM's usual unconditional input."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise: Empty Latent Image (HDM was trained at about 1024x1024 pixels: 1024x1024, 1280x960, 1440x800 ...; sizes off the 16-px grid are padded to the model's patch grid and cropped back)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed of the starting noise (and of TREAD's token choice); the same seed gives the same image."),
                io.Int.Input("steps", default=24, min=1, max=10000, tooltip="Number of sampling steps; the model card recommends 16-32."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale; the model card recommends 2-4."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip="The sampling algorithm; HDM's reference sampler is euler."),
                io.Combo.Input(
                    "scheduler",
                    options=[HDM_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS),
                    default=HDM_SCHEDULER,
                    tooltip="hdm_uniform: HDM's reference schedule (uniform steps from t=1 to 0, shifted only by a ModelSampling node). The others are ComfyUI's schedulers.",
                ),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="How much of the schedule to run: 1 for text-to-image, lower keeps more of an input latent (image-to-image)."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent (decode with HDM VAE Decode or VAE Decode).")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None) -> bool | str:
        return check_options(cls, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise=1.0) -> io.NodeOutput:
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        check_hdm_latent(latent)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = hdm_sigmas(model, scheduler, steps, denoise)
        out = latent_image.copy()
        if sigmas.numel() == 0:
            out["samples"] = latent
            return io.NodeOutput(out)
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        samples = comfy.sample.sample_custom(
            model,
            noise,
            cfg,
            comfy.samplers.sampler_object(sampler_name),
            sigmas,
            positive,
            negative,
            latent,
            noise_mask=latent_image.get("noise_mask"),
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        out["samples"] = samples
        return io.NodeOutput(out)
