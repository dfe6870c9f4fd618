"""Fit HDM's latent→RGB preview factors by least squares on real EQ-SDXL-VAE decodes.

ComfyUI's Latent2RGB previewer maps the model-space x0 of each step linearly to RGB in
[-1, 1]: ``rgb = x0 · F + b`` per latent cell (``latent_rgb_factors`` F is 4×3,
``latent_rgb_factors_bias`` b). This script finds the F and b that best predict what the VAE
itself decodes:

1. each image is resized (short side), centre-cropped to a multiple of 8 and encoded with
   the given VAE (ComfyUI's own ``comfy.sd.VAE``, so the same code as in use);
2. the latent is decoded again; the decode is average-pooled over 8×8 pixels, giving one
   RGB target in [-1, 1] per latent cell;
3. the latent is normalised into HDM's model space (``hdm_core.latents.normalize``), the
   space the previewer sees;
4. ``[z, 1] · W ≈ rgb`` is solved by least squares over all cells of all images.

It prints F and b ready to paste into ``nodes/model.py`` (``HDMLatentFormat``), with the fit's
R² and RMSE. Run it on the real EQ-SDXL-VAE and a few dozen varied anime images::

    COMFYUI_PATH=~/ComfyUI python benchmarks/fit_latent_rgb.py --vae ~/ComfyUI/models/vae/eq-sdxl-vae.safetensors --images ./pics
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script: use this checkout's hdm_core
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hdm_core.latents import normalize  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def fit_factors(latents: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Least squares ``rgb ≈ latents · F + b`` over rows; returns ``F`` [C, 3], ``b`` [3], stats."""
    z = latents.double()
    y = rgb.double()
    x = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], dim=1)
    w = torch.linalg.lstsq(x, y).solution
    pred = x @ w
    resid = y - pred
    total = ((y - y.mean(0)) ** 2).sum()
    stats = {"r2": float(1 - (resid**2).sum() / total) if total > 0 else float("nan"), "rmse": float(resid.pow(2).mean().sqrt()), "cells": z.shape[0]}
    return w[:-1].float(), w[-1].float(), stats


def latent_rgb_pairs(vae, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` [1, H, W, 3] in [0, 1] (H, W multiples of 8) → (model-space latents [N, 4], RGB targets [N, 3])."""
    z_vae = vae.encode(image[..., :3])
    decoded = vae.decode(z_vae)
    if decoded.ndim == 5:
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    target = F.avg_pool2d(decoded.movedim(-1, 1).float() * 2 - 1, 8)  # [1, 3, h, w] in [-1, 1]
    z = normalize(z_vae.float())
    return z.movedim(1, -1).reshape(-1, z.shape[1]), target.movedim(1, -1).reshape(-1, 3)


def load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.BICUBIC)
    w, h = img.width // 8 * 8, img.height // 8 * 8
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    import numpy as np

    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def format_factors(factors: torch.Tensor, bias: torch.Tensor) -> str:
    rows = ",\n".join(f"        [{', '.join(f'{v:.4f}' for v in row.tolist())}]" for row in factors)
    return (
        "    latent_rgb_factors = [\n        #   R        G        B\n" + rows + ",\n    ]\n"
        f"    latent_rgb_factors_bias = [{', '.join(f'{v:.4f}' for v in bias.tolist())}]"
    )


def load_vae(path: str, comfyui: str | None):
    root = comfyui or os.environ.get("COMFYUI_PATH")
    if root and root not in sys.path:
        sys.path.insert(0, str(Path(root).expanduser()))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(path, safe_load=True)
    if any(k.startswith("vae.") for k in sd):  # an all-in-one HDM file
        sd = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
    vae = comfy.sd.VAE(sd=sd)
    if getattr(vae, "first_stage_model", None) is None:
        raise SystemExit(f"{path}: ComfyUI could not build a VAE from it")
    if vae.latent_channels != 4:
        raise SystemExit(f"{path}: a {vae.latent_channels}-channel VAE; EQ-SDXL-VAE has 4")
    return vae


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Fit HDM's latent→RGB preview factors on real VAE decodes.")
    parser.add_argument("--vae", required=True, help="EQ-SDXL-VAE .safetensors (or an HDM all-in-one file with vae.* keys)")
    parser.add_argument("--images", required=True, help="folder of images (png/jpg/webp)")
    parser.add_argument("--size", type=int, default=512, help="short side in pixels before encoding (default 512)")
    parser.add_argument("--limit", type=int, default=0, help="use at most this many images (0 = all)")
    parser.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    args = parser.parse_args(argv)

    files = sorted(p for p in Path(args.images).expanduser().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"no images found in {args.images}")
    vae = load_vae(args.vae, args.comfyui)
    zs, ys = [], []
    with torch.inference_mode():
        for path in files:
            z, y = latent_rgb_pairs(vae, load_image(path, args.size))
            zs.append(z)
            ys.append(y)
    factors, bias, stats = fit_factors(torch.cat(zs), torch.cat(ys))
    print(f"fitted on {len(files)} images, {stats['cells']} latent cells: R^2 = {stats['r2']:.4f}, RMSE = {stats['rmse']:.4f} (RGB in [-1, 1])")
    print(format_factors(factors, bias))
    return {"factors": factors.tolist(), "bias": bias.tolist(), **stats}


if __name__ == "__main__":
    main()
