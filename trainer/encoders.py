"""The trainer's image and text encoders: HDM's own by default, user factories as an option.

The data path (:mod:`hdm_core.train.data`) needs ``encode_images(pixels [B, 3, H, W] in
[-1, 1]) → VAE latents [B, 4, H/8, W/8]`` and ``encode_text(list[str]) → [B, T, D]`` (or a
list of ``[T_i, D]``); previews additionally need ``encode_prompts`` (inference-style) and
``decode_latents(normalised latents) → images in [0, 1]``.

**Built-in (the short form).** ``[model] checkpoint`` / ``text_encoder`` / ``vae`` name
HDM's files and the trainer loads them with :mod:`hdm_core.vae` and :mod:`hdm_core.text`:

* VAE — from the checkpoint's ``vae.*`` keys unless ``[model] vae`` names another file;
  latents are a posterior *sample* (``[encoders] vae_sample = true``, HDM's recipe; one
  seed per image, so runs and resumes are reproducible) or the posterior mean; the data
  path normalises them with :mod:`hdm_core.latents`.
* Qwen3-0.6B — ``[encoders] text_padding = "max_length"`` (default) is HDM's training
  encoding: every caption truncated/right-padded with ``<|endoftext|>`` to
  ``text_max_length`` (256) tokens, the encoder masked, the XUT trained on all 256
  positions without a mask. ``"none"`` gives each caption only its own tokens (what
  inference feeds the model); a batch of unequal captions is then zero-padded with a key
  mask so each sample computes as if alone. Preview prompts are always encoded
  inference-style, one prompt per call, like :class:`hdm_core.pipeline.HDMPipeline`.

:func:`load_hdm_vae` and :func:`load_hdm_text_encoder` are also ordinary factories.

**Advanced.** ``[encoders] image`` / ``text`` = ``"package.module:function"`` replace the
built-in ones: the factory is called with the ``*_args`` table plus ``device`` and
``dtype`` and returns either the callable itself or an object with ``encode`` (and, for
images, optionally ``decode(VAE latents) → pixels in [-1, 1]``). A ``cache_id`` attribute
(a string that changes whenever the output would) enables the disk caches; a true
``stochastic`` attribute makes the data path pass ``seeds=[...]`` (one per image).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hdm_core.checkpoint import CheckpointError, read_state_dict
from hdm_core.latents import denormalize
from hdm_core.text import TRAIN_MAX_TOKENS
from hdm_core.train.data import split_text_output
from hdm_core.weights import HDM_FILE, HDM_REPO, QWEN3_REPO

from .config import ConfigError, FitConfig

log = logging.getLogger(__name__)

CHECKPOINT_HINT = f"HDM's released checkpoint is '{HDM_FILE}' from https://huggingface.co/{HDM_REPO}"
TEXT_ENCODER_HINT = (
    f"HDM's text encoder is {QWEN3_REPO}: a folder with model.safetensors + config.json from "
    f"https://huggingface.co/{QWEN3_REPO}"
)
VAE_HINT = "the VAE normally comes from the HDM checkpoint's own vae.* keys: leave [model] vae empty"


@dataclass
class Encoders:
    """What the data path and the previews call (``None`` where nothing is configured)."""

    encode_images: Callable[..., torch.Tensor] | None = None
    encode_text: Callable[[list[str]], Any] | None = None
    encode_prompts: Callable[[list[str]], list[torch.Tensor]] | None = None
    decode_latents: Callable[[torch.Tensor], torch.Tensor] | None = None

    def prompt_contexts(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """``[T_i, D]`` per prompt for previews (the text encoder's own rule when it has no prompt mode)."""
        if self.encode_prompts is not None:
            return list(self.encode_prompts(list(prompts)))
        if self.encode_text is None:
            raise ConfigError("no text encoder is configured")
        return split_text_output(self.encode_text(list(prompts)), len(prompts))

    def release_text_encoder(self) -> None:
        """Drop the text encoder (after every caption is cached), freeing its memory."""
        self.encode_text = None
        self.encode_prompts = None


# --------------------------------------------------------------------------- files
def require_path(key: str, path: str, hint: str) -> Path:
    """``path`` as a Path, or a :class:`ConfigError` naming the config key, the file and the fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"[model] {key} = {p}: no such file or folder. {hint[0].upper()}{hint[1:]}; "
            "put it there or fix the path (relative paths are relative to the config file's folder)"
        )
    return p


def file_identity(path: str | os.PathLike) -> str:
    """Path, size and modification time of a weight file (or of every file in a folder), for cache ids."""
    p = Path(path).expanduser().resolve()
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    parts = [str(p)] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return "|".join(parts)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- built-in encoders
class HDMImageEncoder:
    """:class:`hdm_core.vae.AutoencoderKL` as the trainer's encoder (raw VAE latents) and preview decoder."""

    def __init__(self, vae, *, sample: bool = True, source: str = "", chunk: int = 4) -> None:
        self.vae = vae
        self.sample = sample
        self.chunk = chunk
        self.stochastic = sample  # the data path then passes one seed per image
        self.cache_id = f"hdm-vae|{source}|{_dtype_name(vae.dtype)}|{'sample' if sample else 'mean'}"

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """VAE latents (float32, on the VAE's device) for pixels in [-1, 1], ``chunk`` images at a time."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds] if seeds is not None else None
        parts = []
        for start in range(0, pixels.shape[0], self.chunk):
            g = gens[start : start + self.chunk] if gens is not None else None
            parts.append(self.vae.encode(pixels[start : start + self.chunk], sample=self.sample, generator=g).float())
        return torch.cat(parts)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from normalised latents (one image at a time, like the pipeline)."""
        return self.vae.decode_latents(z)


class HDMTextEncoder:
    """:class:`hdm_core.text.TextEncoder` with the trainer's caption rule (see the module docstring)."""

    def __init__(self, text_encoder, *, padding: str = "max_length", max_length: int = TRAIN_MAX_TOKENS, source: str = "") -> None:
        if padding not in ("max_length", "none"):
            raise ValueError(f"padding must be 'max_length' or 'none', got '{padding}'")
        self.te = text_encoder
        self.padding = padding
        self.max_length = max_length
        self.width = text_encoder.hidden_size
        self._warned_truncation = False
        rule = f"max_length={max_length}" if padding == "max_length" else "unpadded"
        self.cache_id = f"hdm-qwen3|{source}|{_dtype_name(text_encoder.dtype)}|{rule}"

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor | list[torch.Tensor]:
        if self.padding == "none":
            return [c.float() for c in self.te.encode_each(captions)]
        self._warn_truncation(captions)
        return self.te.encode(captions, max_length=self.max_length).float()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """Inference-style contexts, one prompt per call (as :class:`hdm_core.pipeline.HDMPipeline`)."""
        return [self.te.encode([p])[0].float() for p in prompts]

    def _warn_truncation(self, captions: list[str]) -> None:
        if self._warned_truncation:
            return
        lengths = [len(self.te.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in captions]
        longest = max(lengths, default=0)
        if longest > self.max_length:
            self._warned_truncation = True
            log.warning(
                "a caption has %d tokens; captions are cut to text_max_length = %d (HDM's training rule). "
                "Shorten long captions or raise [encoders] text_max_length", longest, self.max_length,
            )  # fmt: skip


def _vae_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The pipeline's rule: float32 on CPU, the model's dtype on accelerators."""
    return torch.float32 if device.type == "cpu" else dtype


def load_hdm_vae(
    path: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, sample: bool = True,
    key: str = "vae",
) -> HDMImageEncoder:  # fmt: skip
    """Factory: the VAE from an HDM checkpoint (``vae.*``) or a separate VAE file."""
    from hdm_core.vae import find_vae_prefix, load_vae

    device = torch.device(device)
    p = require_path(key, path, CHECKPOINT_HINT if key == "checkpoint" else VAE_HINT)
    try:
        if key == "checkpoint" and find_vae_prefix(read_state_dict(p)) is None:
            raise ConfigError(
                f"[model] checkpoint = {p} holds no VAE (no vae.* keys, e.g. a bare diffusion-model file). "
                f"Set [model] vae = the EQ-SDXL-VAE file, or use the released all-in-one '{HDM_FILE}'"
            )
        vae = load_vae(p, dtype=_vae_dtype(device, dtype), device=device)
    except CheckpointError as exc:
        raise ConfigError(f"[model] {key} = {p}: {exc}") from exc
    return HDMImageEncoder(vae, sample=sample, source=file_identity(p))


def load_hdm_text_encoder(
    path: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    padding: str = "max_length", max_length: int = TRAIN_MAX_TOKENS, key: str = "text_encoder",
) -> HDMTextEncoder:  # fmt: skip
    """Factory: Qwen3-0.6B from a Hugging Face folder, a ``.safetensors`` file or an HDM trainer checkpoint."""
    from hdm_core.text import TextEncoder

    p = require_path(key, path, TEXT_ENCODER_HINT)
    try:
        te = TextEncoder.from_file(p, dtype=dtype, device=device)
    except CheckpointError as exc:
        raise ConfigError(f"[model] {key} = {p}: {exc}") from exc
    return HDMTextEncoder(te, padding=padding, max_length=max_length, source=file_identity(p))


# --------------------------------------------------------------------------- user factories
def resolve_factory(spec: str, what: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"[encoders] {what} = \"{spec}\": expected \"package.module:function\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"[encoders] {what}: cannot import {module_name} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"[encoders] {what}: {module_name} has no function {attr}")
    return factory


class _Bound:
    """An ``encode`` method as a plain callable that keeps the object's ``cache_id`` and ``stochastic``."""

    def __init__(self, fn: Callable[..., Any], owner: Any) -> None:
        self.fn = fn
        self.cache_id = getattr(owner, "cache_id", None)
        self.stochastic = bool(getattr(owner, "stochastic", False))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _decode_to_unit(decode: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A user ``decode(VAE latents) → [-1, 1]`` as ``normalised latents → [0, 1]``."""

    def run(z: torch.Tensor) -> torch.Tensor:
        return (decode(denormalize(z.float())).float() / 2 + 0.5).clamp(0, 1)

    return run


def _custom_image(cfg: FitConfig, device: torch.device, dtype: torch.dtype, out: Encoders) -> None:
    spec = cfg.encoders.image
    obj = resolve_factory(spec, "image")(**cfg.encoders.image_args, device=device, dtype=dtype)
    if isinstance(obj, HDMImageEncoder):
        out.encode_images, out.decode_latents = obj, obj.decode_latents
    elif hasattr(obj, "encode"):
        out.encode_images = _Bound(obj.encode, obj)
        if hasattr(obj, "decode"):
            out.decode_latents = _decode_to_unit(obj.decode)
    elif callable(obj):
        out.encode_images = obj
    else:
        raise ConfigError(f"[encoders] image factory {spec} returned {type(obj).__name__}, not an encoder")


def _custom_text(cfg: FitConfig, device: torch.device, dtype: torch.dtype, out: Encoders) -> None:
    spec = cfg.encoders.text
    obj = resolve_factory(spec, "text")(**cfg.encoders.text_args, device=device, dtype=dtype)
    if isinstance(obj, HDMTextEncoder):
        out.encode_text, out.encode_prompts = obj, obj.encode_prompts
    elif hasattr(obj, "encode"):
        out.encode_text = _Bound(obj.encode, obj)
    elif callable(obj):
        out.encode_text = obj
    else:
        raise ConfigError(f"[encoders] text factory {spec} returned {type(obj).__name__}, not an encoder")


def check_model_files(cfg: FitConfig) -> None:
    """Fail fast, before anything is loaded, on a missing checkpoint / text encoder / VAE path."""
    require_path("checkpoint", cfg.model.checkpoint, CHECKPOINT_HINT)
    if cfg.model.text_encoder and not cfg.encoders.text:
        require_path("text_encoder", cfg.model.text_encoder, TEXT_ENCODER_HINT)
    if cfg.model.vae and not cfg.encoders.image:
        require_path("vae", cfg.model.vae, VAE_HINT)


def build_encoders(cfg: FitConfig, device: torch.device, dtype: torch.dtype, ctx_dim: int | None = None) -> Encoders:
    """The encoders ``cfg`` asks for: ``[encoders]`` factories where named, HDM's own from ``[model]`` otherwise.

    ``ctx_dim`` (the XUT's context width) is checked against the built-in text encoder.
    """
    from hdm_core.text import has_text_encoder

    out = Encoders()
    enc = cfg.encoders
    if enc.image:
        _custom_image(cfg, device, dtype, out)
    else:
        source, key = (cfg.model.vae, "vae") if cfg.model.vae else (cfg.model.checkpoint, "checkpoint")
        vae = load_hdm_vae(source, device=device, dtype=dtype, sample=enc.vae_sample, key=key)
        out.encode_images, out.decode_latents = vae, vae.decode_latents
    if enc.text:
        _custom_text(cfg, device, dtype, out)
        return out
    if cfg.model.text_encoder:
        source, key = cfg.model.text_encoder, "text_encoder"
    elif has_text_encoder(cfg.model.checkpoint):  # an HDM trainer checkpoint with te.* keys
        source, key = cfg.model.checkpoint, "checkpoint"
    else:
        raise ConfigError(
            f"[model] text_encoder is not set and the checkpoint {cfg.model.checkpoint} holds no text encoder. "
            f"Set text_encoder = the Qwen3-0.6B folder ({TEXT_ENCODER_HINT})"
        )
    te = load_hdm_text_encoder(source, device=device, dtype=dtype, padding=enc.text_padding, max_length=enc.text_max_length, key=key)
    if ctx_dim is not None and te.width != ctx_dim:
        raise ConfigError(
            f"[model] {key} = {source}: the text encoder's width is {te.width} but the checkpoint's model takes "
            f"{ctx_dim}-wide text; HDM uses {QWEN3_REPO} (width 1024)"
        )
    out.encode_text, out.encode_prompts = te, te.encode_prompts
    return out
