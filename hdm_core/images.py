"""Image tensors ⇄ PNG files with generation parameters in their text chunks.

Pixels are quantised the way HDM's reference UI and ComfyUI's SaveImage do
(``uint8(clip(255·x))``, truncating), so a headless image and a ComfyUI image of the same
decode are byte-identical. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .checkpoint import atomic_write

METADATA_KEY = "hdm"  # JSON with every generation parameter
PARAMETERS_KEY = "parameters"  # the same, as the human-readable text other tools display


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in ``[0, 1]`` → ``[H, W, 3]`` uint8 (truncating, like ComfyUI's SaveImage)."""
    arr = (255.0 * image.detach().float().cpu().permute(1, 2, 0)).numpy()
    return np.clip(arr, 0, 255).astype(np.uint8)


def to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray(to_uint8(image))


def parameters_text(meta: Mapping[str, Any]) -> str:
    """A1111-style summary: prompt, ``Negative prompt: …``, then ``Key: value`` pairs."""
    rest = {k: v for k, v in meta.items() if k not in ("prompt", "negative")}
    pairs = ", ".join(f"{k.replace('_', ' ').capitalize()}: {v}" for k, v in rest.items())
    return f"{meta.get('prompt', '')}\nNegative prompt: {meta.get('negative', '')}\n{pairs}"


def save_png(image, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a PIL image or ``[3, H, W]`` tensor as PNG with ``metadata`` in text chunks, atomically."""
    from PIL.PngImagePlugin import PngInfo

    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    path = Path(path)
    info = PngInfo()
    if metadata:
        info.add_text(PARAMETERS_KEY, parameters_text(metadata))
        info.add_text(METADATA_KEY, json.dumps(dict(metadata), ensure_ascii=False))
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON parameters :func:`save_png` stored (``{}`` when there are none)."""
    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get(METADATA_KEY) if hasattr(im, "text") else None
    return json.loads(text) if text else {}
