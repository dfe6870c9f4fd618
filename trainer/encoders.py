"""Pluggable image and text encoders for the trainer.

The trainer needs two callables (see :mod:`hdm_core.train.data`): ``encode_images(pixels
[B, 3, H, W] in [-1, 1]) → VAE latents [B, 4, H/8, W/8]`` and ``encode_text(list[str]) →
[B, T, D]`` (or a list of ``[T_i, D]``); sample images additionally need
``decode(VAE latents) → pixels in [-1, 1]``. The config names a factory for each as
``"package.module:function"``; the factory is called with the ``*_args`` table plus
``device`` and ``dtype`` keyword arguments and returns either the callable itself or an
object with ``encode`` (and, for images, optionally ``decode``) methods. A ``cache_id``
attribute on the returned object (a string that changes whenever its output would)
enables the on-disk caches.

Without an image encoder the trainer can still run from a filled latent cache; without a
decoder, sample images are skipped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import ConfigError, EncoderSection


@dataclass
class Encoders:
    encode_images: Callable[[torch.Tensor], torch.Tensor] | None = None
    encode_text: Callable[[list[str]], Any] | None = None
    decode_latents: Callable[[torch.Tensor], torch.Tensor] | None = None


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
    """An ``encode``/``decode`` method as a plain callable that keeps the object's ``cache_id``."""

    def __init__(self, fn: Callable[..., Any], owner: Any) -> None:
        self.fn = fn
        self.cache_id = getattr(owner, "cache_id", None)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def build_encoders(cfg: EncoderSection, device: torch.device, dtype: torch.dtype) -> Encoders:
    out = Encoders()
    if cfg.image:
        obj = resolve_factory(cfg.image, "image")(**cfg.image_args, device=device, dtype=dtype)
        if hasattr(obj, "encode"):
            out.encode_images = _Bound(obj.encode, obj)
            if hasattr(obj, "decode"):
                out.decode_latents = _Bound(obj.decode, obj)
        elif callable(obj):
            out.encode_images = obj
        else:
            raise ConfigError(f"[encoders] image factory {cfg.image} returned {type(obj).__name__}, not an encoder")
    if cfg.text:
        obj = resolve_factory(cfg.text, "text")(**cfg.text_args, device=device, dtype=dtype)
        if hasattr(obj, "encode"):
            out.encode_text = _Bound(obj.encode, obj)
        elif callable(obj):
            out.encode_text = obj
        else:
            raise ConfigError(f"[encoders] text factory {cfg.text} returned {type(obj).__name__}, not an encoder")
    return out
