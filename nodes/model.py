"""HDM as a native ComfyUI model family: latent format, diffusion model, BaseModel, model config.

Built the way ComfyUI's own families are (Lumina2, SD3, Qwen-Image), but registered by the
pack's own loader nodes instead of ComfyUI's detection (the pack patches nothing in ComfyUI):

* :class:`HDMLatentFormat` — EQ-SDXL-VAE latents, normalised per channel with the statistics
  in :mod:`hdm_core.latents` (``process_in``/``process_out``), plus preview RGB factors.
* :class:`HDMDiffusionModel` — ``hdm_core.XUT`` built from ComfyUI's ``operations`` (manual
  cast, lowvram streaming, LoRA patching) with ComfyUI's ``optimized_attention`` (so
  ``--use-sage-attention``, flash, xformers and attention-override nodes apply), exposing
  ComfyUI's ``forward(x, timesteps, context, transformer_options, **conds)``.
* :class:`HDMModel` — the ``BaseModel`` (``ModelType.FLOW``): text as ``CONDRegular`` (joint
  attention must not see repeat-padded prompts), camera and TREAD gamma as ``CONDConstant``,
  and ``t ∈ [0, 1]`` whatever ``ModelSampling*`` node is applied.
* :class:`HDMConfig` — the supported-model config (sampling multiplier 1, shift 1, dtypes,
  memory factor, key prefixes of HDM checkpoints).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

import comfy.cli_args
import comfy.conds
import comfy.latent_formats
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_base
import comfy.patcher_extension
import comfy.supported_models_base

from ..hdm_core import tread as tread_ops
from ..hdm_core.config import XUTConfig
from ..hdm_core.latents import LATENT_CHANNELS, LATENTS_MEAN, LATENTS_STD, denormalize, normalize
from ..hdm_core.positions import camera_pos_map
from ..hdm_core.xut import XUT, patch_grid

log = logging.getLogger(__name__)

#: Camera of a conditioning without an HDM Camera node: (x shift, y shift, zoom).
NEUTRAL_CAMERA = (0.0, 0.0, 1.0)

#: ComfyUI conditioning keys the HDM nodes write (and ``HDMModel.extra_conds`` reads).
CAMERA_KEY = "hdm_camera"
TREAD_KEY = "hdm_tread_gamma"


class HDMLatentFormat(comfy.latent_formats.LatentFormat):
    """EQ-SDXL-VAE latents; the model works on ``(z − mean) / std`` per channel.

    Preview factors (``latent_rgb_factors``/``_bias``, applied by ComfyUI's Latent2RGB
    previewer to the model-space x0): **not yet fitted on EQ-SDXL-VAE decodes.** They are
    ComfyUI's published SDXL factors carried into HDM's normalised space, assuming EQ-VAE kept
    SDXL's channel meaning: SDXL previews ``F·(0.13025·z_vae) + b``; with
    ``z_vae = z·std + mean`` that is ``F'·z + b'`` where ``F'[c] = 0.13025·std[c]·F[c]`` and
    ``b' = b + Σ_c 0.13025·mean[c]·F[c]``. ``benchmarks/fit_latent_rgb.py`` fits real
    factors by least squares from an EQ-SDXL-VAE file and a folder of images; replace these
    numbers with its output once run on the real VAE. (``tests`` check the derivation.)
    """

    latent_channels = LATENT_CHANNELS
    scale_factor = 1.0
    latent_rgb_factors = [
        #   R        G        B
        [0.4773, 0.5532, 0.5675],
        [-0.2259, -0.0037, 0.0953],
        [0.1011, 0.1044, -0.0340],
        [-0.2305, -0.1815, -0.1593],
    ]
    latent_rgb_factors_bias = [-0.0572, -0.2473, -0.2681]
    taesd_decoder_name = None  # TAESDXL is trained on SDXL's latent space, not EQ-SDXL-VAE's

    def __init__(self) -> None:
        self.latents_mean = torch.tensor(LATENTS_MEAN).view(1, LATENT_CHANNELS, 1, 1)
        self.latents_std = torch.tensor(LATENTS_STD).view(1, LATENT_CHANNELS, 1, 1)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return normalize(latent)

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return denormalize(latent)


# ----------------------------------------------------------------------------- attention
def comfy_attention_fn(q, k, v, *, mask=None, transformer_options=None):
    """hdm_core's attention contract on ComfyUI's ``optimized_attention``.

    ``q, k, v`` ``[B, H, N, D]`` → ``[B, N, H·D]``. The kernel is looked up at call time, so
    whatever ComfyUI selected at startup (sage, flash, xformers, PyTorch, split) and any
    ``optimized_attention_override`` in ``transformer_options`` applies — except that on the CPU
    ComfyUI's default sub-quadratic fallback is replaced by PyTorch SDPA (:func:`cpu_fallback_kernel`). hdm_core's boolean
    key mask (True = attend) becomes the additive mask every ComfyUI backend accepts.
    """
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
    kernel = comfy_attention.optimized_attention
    if q.device.type == "cpu" and cpu_fallback_kernel(kernel):
        kernel = comfy_attention.attention_pytorch
    return kernel(
        q, k, v, q.shape[1], mask=mask, skip_reshape=True, transformer_options=transformer_options if transformer_options is not None else {}
    )


def cpu_fallback_kernel(kernel) -> bool:
    """Whether ``kernel`` is the sub-quadratic fallback ComfyUI picks when nothing else is set.

    ComfyUI chooses it for CPUs (and old GPUs) unless told otherwise; on a CPU PyTorch's own
    SDPA is exact, as memory-frugal (tiled) and much faster — HDM's sampling step in ComfyUI
    goes from 16.0 to 11.6 s at 512 px (``benchmarks/e2e.py``). A user who asked for it with
    ``--use-quad-cross-attention`` keeps it.
    """
    return kernel is comfy_attention.attention_sub_quad and not getattr(
        comfy.cli_args.args, "use_quad_cross_attention", False  # not an option in ComfyUI 0.3.64
    )


# ----------------------------------------------------------------------------- TREAD routing
def branch_rows(batch: int, cond_or_uncond: list[int] | None) -> list[tuple[int, int]]:
    """``(branch, row)`` per sample of a batch ComfyUI assembled from ``cond_or_uncond`` chunks."""
    chunks = list(cond_or_uncond) if cond_or_uncond else [0]
    if batch % len(chunks):
        chunks = [0]
    size = batch // len(chunks)
    return [(chunks[i // size], i % size) for i in range(batch)]


# ----------------------------------------------------------------------------- diffusion model
class HDMDiffusionModel(XUT):
    """``hdm_core.XUT`` with ComfyUI's diffusion-model interface.

    A subclass rather than a wrapper so the state-dict names stay the XUT's own
    (``diffusion_model.backbone.…``), which is what LoRA key maps and checkpoints use.
    """

    def __init__(self, image_model: str | None = None, dtype=None, device=None, operations=None, **config: Any) -> None:
        super().__init__(
            XUTConfig.from_dict(config), dtype=dtype, device=device, operations=operations, attention=comfy_attention_fn
        )
        # Inference only: older ComfyUI (0.3.x) leaves the diffusion model in training mode,
        # where XUT would route tokens at the training TREAD rate.
        self.eval()

    def forward(self, x, timesteps, context=None, transformer_options={}, **kwargs):  # noqa: B006 (ComfyUI's signature)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward,
            self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timesteps, context, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context=None, transformer_options={}, hdm_camera=None, hdm_tread_gamma=0.0, hdm_seed=None, **kwargs):  # noqa: B006
        b, _, height, width = x.shape
        p = self.config.patch_size
        if height < p or width < p:
            raise ValueError(
                f"HDM needs an image of at least {8 * p}x{8 * p} pixels; this latent is {width * 8}x{height * 8} px "
                f"(latent {width}x{height}). Use a larger size in Empty Latent Image."
            )
        # Any other size works: hdm_core pads latents off the 2x2 patch grid and crops back
        # (ComfyUI's pad_to_patch_size rule), positions and aspect from the real size.
        x_shift, y_shift, zoom = hdm_camera if hdm_camera is not None else NEUTRAL_CAMERA
        # The reference front-ends always pass a latent-resolution camera map (even the
        # neutral one), which the model downsamples; built in float32 whatever the model dtype.
        pos_map = camera_pos_map(height, width, x_shift, y_shift, zoom, device=x.device)[None]

        tread_mask = None
        gamma = float(hdm_tread_gamma or 0.0)
        if gamma > 0.0:
            rows, cols = patch_grid(height, width, p)  # the padded grid the XUT routes
            num_img = rows * cols
            t_list = timesteps.reshape(-1).tolist() if torch.is_tensor(timesteps) else [float(timesteps)]
            if len(t_list) == 1:
                t_list = t_list * b
            # hdm_core's one seeding rule (per seed, branch, row and t): the same tokens as the
            # headless pipeline, whether ComfyUI batches the two CFG branches or not.
            rows = branch_rows(b, transformer_options.get("cond_or_uncond"))
            seed = int(hdm_seed or 0)
            seeds = [tread_ops.selection_seed(seed, branch, row, t) for (branch, row), t in zip(rows, t_list)]
            tread_mask = tread_ops.seeded_keep_mask(num_img, gamma, seeds, device=x.device)

        if context is not None and context.ndim == 2:
            context = context[None]
        return super().forward(
            x, timesteps, ctx=context, pos_map=pos_map, tread_rate=0.0, tread_mask=tread_mask, transformer_options=transformer_options
        )


# ----------------------------------------------------------------------------- BaseModel
class HDMModel(comfy.model_base.BaseModel):
    """HDM in ComfyUI: a rectified-flow model (``x_t = t·noise + (1 − t)·x0``, predicts ``noise − x0``)."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None) -> None:
        super().__init__(model_config, model_type, device=device, unet_model=HDMDiffusionModel)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            # Text tokens share self-attention with the image: prompts of different lengths
            # must run as separate passes, never repeat-padded (CONDCrossAttn would pad).
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        camera = kwargs.get(CAMERA_KEY, None)
        out[CAMERA_KEY] = comfy.conds.CONDConstant(tuple(float(v) for v in (camera if camera is not None else NEUTRAL_CAMERA)))
        out[TREAD_KEY] = comfy.conds.CONDConstant(float(kwargs.get(TREAD_KEY, 0.0) or 0.0))
        seed = kwargs.get("seed", None)
        out["hdm_seed"] = comfy.conds.CONDConstant(int(seed) if seed is not None else 0)
        return out

    def process_timestep(self, timestep, **kwargs):
        # ComfyUI hands the model sigma·multiplier. HDM's config says multiplier 1, but the stock
        # ModelSamplingSD3 node patches in 1000; dividing keeps t ∈ [0, 1] under every node.
        multiplier = float(getattr(self.model_sampling, "multiplier", 1.0) or 1.0)
        return timestep / multiplier


# ----------------------------------------------------------------------------- model config
class HDMConfig(comfy.supported_models_base.BASE):
    """Supported-model config of HDM, built from the XUT architecture read off a checkpoint."""

    unet_config = {"image_model": "hdm_xut"}
    unet_extra_config = {}  # the BASE default (num_heads/num_head_channels) is for UNets
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}
    latent_format = HDMLatentFormat
    #: Peak activation memory of one forward pass in ComfyUI's unit (``area·dtype_size·0.01·f``
    #: MiB): 0.58 measured at 512 px (0.47-0.52 at 768-2048 px) by
    #: benchmarks/measure_memory_factor.py on the released 343M architecture, rounded up.
    memory_usage_factor = 0.6
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    vae_key_prefix = ["vae."]
    text_encoder_key_prefix = ["te.text_models.0."]

    def __init__(self, xut_config: XUTConfig) -> None:
        super().__init__({"image_model": "hdm_xut", **xut_config.to_dict()})
        self.xut_config = xut_config

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.FLOW

    def inpaint_model(self):
        return False

    def get_model(self, state_dict, prefix="", device=None):
        return HDMModel(self, device=device)

    def process_unet_state_dict_for_saving(self, state_dict):
        # Saved the way released HDM files are laid out, so the HDM loader reads them back.
        return {"unet.model." + k: v for k, v in state_dict.items()}

    def process_clip_state_dict_for_saving(self, state_dict):
        from .text_encoder import clip_keys_to_trainer_layout

        return clip_keys_to_trainer_layout(state_dict)

    def clip_target(self, state_dict={}):  # noqa: B006 (ComfyUI's signature)
        return None  # the HDM loaders build the text encoder themselves (nodes/text_encoder.py)


def expected_unet_keys(xut_config: XUTConfig) -> dict[str, list[int]]:
    """State-dict names and shapes of the diffusion model for ``xut_config`` (built on meta)."""
    with torch.device("meta"):
        model = XUT(xut_config, dtype=torch.float16, device="meta")
    return {k: list(v.shape) for k, v in model.state_dict().items()}


__all__ = [
    "CAMERA_KEY",
    "HDMConfig",
    "HDMDiffusionModel",
    "HDMLatentFormat",
    "HDMModel",
    "NEUTRAL_CAMERA",
    "TREAD_KEY",
    "comfy_attention_fn",
    "branch_rows",
    "expected_unet_keys",
]
