"""Text-to-image with HDM in plain PyTorch: the reference inference recipe, piece by piece.

One generation is: encode the prompt and the negative prompt *separately* (Qwen3, see
:mod:`hdm_core.text`), draw seeded noise ``[B, 4, H/8, W/8]``, integrate the flow from
``t = 1`` to ``0`` with CFG (negative branch optionally weakened by TREAD routing, the
"TREAD gamma"), the camera position map at latent resolution and the aspect addon
``log(W/H)``, then denormalise and decode with the VAE.

Each step is a small public function (:func:`latent_size`, :func:`initial_noise`,
:func:`guidance_kwargs`, :func:`velocity_fn`, :func:`sample_latents`) so other front-ends
(the ComfyUI nodes, tests comparing the two) can reproduce or swap any one of them;
:class:`HDMPipeline` strings them together with the three models loaded once.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .flow import SAMPLERS, StepCallback, cfg_model, flow_timesteps, get_sampler, seeded_noise
from .latents import LATENT_CHANNELS, VAE_SCALE
from .positions import camera_pos_map
from .tread import COND_BRANCH, UNCOND_BRANCH, SeededRouting
from .xut import patch_grid

#: Image sizes must be multiples of this: one latent cell of the VAE. (Latents off the XUT's
#: 2×2 patch grid are padded and cropped back by the model, as ComfyUI's DiT families do.)
SIZE_MULTIPLE = VAE_SCALE
#: Smallest image side: one 2×2 patch of latent cells.
MIN_SIZE = VAE_SCALE * 2


@dataclass
class GenerationParams:
    """Everything that determines an image (all of it goes into the PNG metadata).

    Defaults follow HDM's official UI: 1024², 32 Euler steps, CFG 3, the conditional pass
    with every token and the unconditional pass routed at TREAD rate 0.5, a neutral camera
    map. ``tread_gamma`` of 0 means *off* (the original pipeline's quirk of treating 0 as
    0.5 is not reproduced). ``camera_map=False`` gives the model's own exact patch grid,
    which is what HDM-ext in ComfyUI uses when no camera node is connected.
    """

    prompt: str = ""
    negative: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 32
    cfg: float = 3.0
    sampler: str = "euler"
    seed: int = 0
    batch_size: int = 1
    shift: float = 1.0
    camera_x: float = 0.0
    camera_y: float = 0.0
    zoom: float = 1.0
    camera_map: bool = True
    tread_gamma: float = 0.0
    tread_gamma_uncond: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, e.g. the original prompt before a hook

    def validate(self) -> "GenerationParams":
        """Raise ``ValueError`` naming the bad value and the fix."""
        check_size(self.width, self.height)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{self.sampler}'; choose one of: {', '.join(SAMPLERS)}")
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg must be a finite number >= 0, got {self.cfg}")
        if not self.zoom > 0 or not math.isfinite(self.zoom):
            raise ValueError(f"zoom must be > 0, got {self.zoom} (1 = neutral, 2 = zoom in twice)")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift} (1 = no timestep shift)")
        for name in ("tread_gamma", "tread_gamma_uncond"):
            g = getattr(self, name)
            if not 0.0 <= g < 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1) (0 = off, 0.5 = drop half the tokens), got {g}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2^64), got {self.seed}")
        return self

    def to_metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        extra = meta.pop("extra")
        meta.update(extra)
        return meta


# --------------------------------------------------------------------------- small pieces
def check_size(width: int, height: int) -> None:
    """Image sides must be multiples of 8 px (one VAE latent cell), at least 16 px (one patch).

    Any such size works: the model pads latents off its 2×2 patch grid and crops back.
    """
    for name, v in (("width", width), ("height", height)):
        if v < MIN_SIZE:
            raise ValueError(f"{name} {v} is too small: HDM images are at least {MIN_SIZE} px on each side (one 2x2 patch of latents)")
        if v % SIZE_MULTIPLE:
            lo = v // SIZE_MULTIPLE * SIZE_MULTIPLE
            raise ValueError(
                f"{name} {v} is not a multiple of {SIZE_MULTIPLE} (the VAE works in {SIZE_MULTIPLE}x{SIZE_MULTIPLE} px cells); "
                f"try {lo} or {lo + SIZE_MULTIPLE}"
            )


def latent_size(width: int, height: int) -> tuple[int, int]:
    """``(h, w)`` of the latent for an image ``width × height``."""
    check_size(width, height)
    return height // VAE_SCALE, width // VAE_SCALE


def initial_noise(batch: int, width: int, height: int, seed: int, device=None) -> torch.Tensor:
    """The starting latent: float32 N(0, 1) from a CPU generator (same on every device, = ComfyUI's)."""
    h, w = latent_size(width, height)
    return seeded_noise((batch, LATENT_CHANNELS, h, w), seed, device=device)


def aspect_addon(width: int, height: int, batch: int, device=None) -> torch.Tensor:
    """HDM's aspect-ratio input ``log(W/H)``, ``[B, 1]``."""
    return torch.full((batch, 1), math.log(width / height), dtype=torch.float32, device=device)


def tread_routing(rate: float, seed: int, branch: int) -> SeededRouting | None:
    """TREAD routing of one CFG branch (``None`` when ``rate`` is 0, i.e. off).

    Token selection follows :func:`hdm_core.tread.selection_seed` (seed, branch, row, t),
    the rule the ComfyUI nodes use too, so both give the same image for a seed.
    """
    return SeededRouting(float(rate), int(seed), branch) if rate else None


def guidance_kwargs(
    ctx: torch.Tensor,
    neg_ctx: torch.Tensor,
    params: GenerationParams,
    device=None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of :func:`velocity_fn`'s model call for the two CFG passes.

    ``ctx``/``neg_ctx`` are ``[B, T, D]`` (different ``T`` allowed, ``T = 0`` too). Both
    passes share the camera map and aspect addon and differ in context and TREAD routing
    (``tread``: a :class:`~hdm_core.tread.SeededRouting` or ``None``; :func:`velocity_fn`
    turns it into the XUT's ``tread_mask`` at each call).
    """
    h, w = latent_size(params.width, params.height)
    b = ctx.shape[0]
    common: dict[str, Any] = {"addon_info": aspect_addon(params.width, params.height, b, device)}
    if params.camera_map:
        common["pos_map"] = camera_pos_map(
            h, w, x_shift=params.camera_x, y_shift=params.camera_y, zoom=params.zoom, device=device
        )[None]
    cond = {"ctx": ctx, "tread": tread_routing(params.tread_gamma, params.seed, COND_BRANCH), **common}
    uncond = {"ctx": neg_ctx, "tread": tread_routing(params.tread_gamma_uncond, params.seed, UNCOND_BRANCH), **common}
    return cond, uncond


def velocity_fn(model: torch.nn.Module, cond: Mapping[str, Any], uncond: Mapping[str, Any] | None, cfg: float):
    """``v(x, t)`` with CFG; the sampler state stays float32 while the model runs in its own dtype.

    A ``tread`` entry (:class:`~hdm_core.tread.SeededRouting`) in ``cond``/``uncond`` becomes
    the XUT's ``tread_mask`` for the image tokens of each call, drawn for its ``t``.
    """
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    patch = model.config.patch_size if hasattr(model, "config") else 1

    def run(x: torch.Tensor, t: torch.Tensor, tread: SeededRouting | None = None, **kw: Any) -> torch.Tensor:
        if tread is not None:
            rows, cols = patch_grid(x.shape[-2], x.shape[-1], patch)  # padded grid, as the XUT routes it
            num_img = rows * cols
            kw["tread_mask"] = tread.keep_mask(t, num_img, batch=x.shape[0], device=x.device)
        return model(x.to(dtype), t, **kw).float()

    return cfg_model(run, dict(cond), dict(uncond) if uncond is not None else None, cfg)


def sample_latents(
    model: torch.nn.Module,
    noise: torch.Tensor,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None,
    params: GenerationParams,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to a clean normalised latent (t = 0)."""
    ts = flow_timesteps(params.steps, params.shift)
    sampler = get_sampler(params.sampler)
    return sampler(velocity_fn(model, cond, uncond, params.cfg), noise.float(), ts, callback=callback)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16).

    Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bf16 matmuls, several times slower
    than float32, so float32 is the faster choice there.
    """
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no capability query
        return False
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def default_dtype(device: torch.device) -> torch.dtype:
    """The fastest faithful dtype for ``device``.

    GPUs: fp16 — the reference runs the released model in fp16 (its ``inference_fm.py``), and
    our fp16 forward is ~10x closer to fp32 than bf16 at the same speed (``benchmarks/gpu.py``:
    0.45% vs 5.5% max-abs relative error at 1024², H100). CPUs: bf16 only where the CPU has
    native bf16 math (AMX / AVX512-BF16; elsewhere bf16 is emulated and slower than fp32),
    else float32.
    """
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


# --------------------------------------------------------------------------- the pipeline
class HDMPipeline:
    """XUT + Qwen3 text encoder + VAE, loaded once, generating images from :class:`GenerationParams`."""

    def __init__(self, xut, text_encoder, vae, device: torch.device | str | None = None) -> None:
        self.xut = xut
        self.text_encoder = text_encoder
        self.vae = vae
        self.device = torch.device(device) if device is not None else next(xut.parameters()).device
        if text_encoder.hidden_size != xut.config.ctx_dim:
            raise ValueError(
                f"the text encoder's width ({text_encoder.hidden_size}) does not match the diffusion model's "
                f"context width ({xut.config.ctx_dim}); HDM uses Qwen3-0.6B (width 1024)"
            )

    @classmethod
    def from_files(
        cls,
        ckpt: str | os.PathLike,
        te: str | os.PathLike | None = None,
        vae: str | os.PathLike | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
    ) -> "HDMPipeline":
        """Load from an HDM checkpoint (XUT + VAE), a Qwen3 file/folder (default: the checkpoint) and an optional VAE file."""
        from .checkpoint import load_xut
        from .text import TextEncoder
        from .vae import load_vae

        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        vae_dtype = vae_dtype or (torch.float32 if device.type == "cpu" else dtype)
        xut = load_xut(ckpt, dtype=dtype, device=device)
        text_encoder = TextEncoder.from_file(te if te is not None else ckpt, dtype=dtype, device=device)
        autoencoder = load_vae(vae if vae is not None else ckpt, dtype=vae_dtype, device=device)
        return cls(xut, text_encoder, autoencoder, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.xut.dtype

    def encode_prompt(self, prompt: str, batch: int = 1) -> torch.Tensor:
        """``[batch, T, 1024]`` context of one prompt (identical rows, so no padding is involved)."""
        if self.text_encoder is None:
            raise RuntimeError(
                "the text encoder was released (release_text_encoder()); encode every prompt first "
                "(encode_contexts) and pass the contexts to sample(), or load the pipeline again"
            )
        with torch.inference_mode():
            ctx = self.text_encoder.encode([prompt])
        return ctx.to(self.device, self.dtype).expand(batch, -1, -1)

    def encode_contexts(self, params: GenerationParams) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(prompt, negative)`` contexts :meth:`sample` needs for ``params``.

        At CFG 1 the negative pass cancels out and is skipped, so the prompt's context stands in.
        """
        b = params.batch_size
        ctx = self.encode_prompt(params.prompt, b)
        return ctx, (self.encode_prompt(params.negative, b) if params.cfg != 1.0 else ctx)

    def release_text_encoder(self) -> None:
        """Drop the text encoder once every prompt is encoded.

        Qwen3-0.6B is the largest model here in float32 (2.4 GB); freeing it before sampling is
        what keeps a 1024² generation on a CPU inside 8 GB (``benchmarks/e2e.py``).
        """
        self.text_encoder = None
        gc.collect()

    def sample(
        self,
        params: GenerationParams,
        callback: StepCallback | None = None,
        contexts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Normalised latents ``[B, 4, H/8, W/8]`` (float32) for ``params``.

        ``contexts`` = :meth:`encode_contexts`'s result, when the prompts were encoded ahead.
        """
        params.validate()
        b = params.batch_size
        ctx, neg = contexts if contexts is not None else self.encode_contexts(params)
        if ctx.shape[0] != b or neg.shape[0] != b:
            raise ValueError(f"contexts hold {ctx.shape[0]}/{neg.shape[0]} rows for a batch of {b}; use encode_contexts(params)")
        guided = params.cfg != 1.0  # at CFG 1 the negative pass cancels out: skip it
        with torch.inference_mode():
            noise = initial_noise(b, params.width, params.height, params.seed, device=self.device)
            cond, uncond = guidance_kwargs(ctx, neg, params, self.device)
            return sample_latents(self.xut, noise, cond, uncond if guided else None, params, callback)

    def decode(self, latents: torch.Tensor, tile: int | None = None, overlap: int = 16) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` (float32, CPU)."""
        with torch.inference_mode():
            return self.vae.decode_latents(latents.to(self.device), tile=tile, overlap=overlap).cpu()

    def generate(
        self,
        params: GenerationParams,
        callback: StepCallback | None = None,
        tile: int | None = None,
    ) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` for ``params``."""
        return self.decode(self.sample(params, callback), tile=tile)

    __call__ = generate


def auto_tile(width: int, height: int, threshold_pixels: int = 2048 * 2048) -> int | None:
    """Tile size (latent cells) for decoding large images, ``None`` for sizes that decode in one go."""
    return 64 if width * height > threshold_pixels else None


__all__ = [
    "GenerationParams",
    "HDMPipeline",
    "MIN_SIZE",
    "SIZE_MULTIPLE",
    "aspect_addon",
    "auto_tile",
    "check_size",
    "guidance_kwargs",
    "initial_noise",
    "latent_size",
    "sample_latents",
    "tread_routing",
    "velocity_fn",
]
