"""Tiny random HDM models and checkpoint files, for tests and smoke runs without real weights.

Every front-end (headless CLI, ComfyUI nodes, trainer) can be exercised end to end on
these: :func:`write_tiny_hdm` writes an all-in-one checkpoint laid out like the released
file (``unet.model.*`` + ``vae.*`` + the trainer's ``vae_mean``/``vae_std`` buffers) and a
Hugging Face style Qwen3 folder (``model.safetensors`` with ``model.*`` keys +
``config.json``). Weights are drawn from a seeded generator with the reference fixture's
rule (N(0, 1/fan_in) matrices, small biases, norm weights near 1) so no layer is zero
and every input (prompt, seed, camera …) changes the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import save_safetensors
from .config import TreadConfig, XUTConfig
from .latents import LATENTS_MEAN, LATENTS_STD
from .text import make_qwen3_config, qwen3_config_dict
from .vae import AutoencoderKL, VAEConfig
from .xut import XUT

#: A small XUT with every feature of the released one (TREAD, addon, shared adaLN).
TINY_XUT = XUTConfig(
    patch_size=2, input_dim=4, dim=64, ctx_dim=32, ctx_size=16, heads=4, dim_head=16, mlp_dim=128,
    depth=2, enc_blocks=1, dec_blocks=2, addon_info_embs_dim=1,
    tread_config=TreadConfig(prev_trns_depth=1, post_trns_depth=1, dropout_ratio=0.5),
)
#: A small Qwen3 (full vocabulary, so the real tokenizer's ids fit) whose width is TINY_XUT's ctx_dim.
#: head_dim stays 128 because ComfyUI's Qwen3_06BConfig fixes it (a class attribute, not a field).
TINY_QWEN3 = qwen3_config_dict(
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=128)
)
#: A small SDXL-layout VAE (4 levels, so it is ×8 like the real one, and ComfyUI's key map applies).
TINY_VAE = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=32)


@torch.no_grad()
def reinit_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter from a seeded generator (the reference fixtures' rule)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        is_norm_weight = p.ndim == 1 and name.endswith("weight") and ("norm" in name or name.startswith("shared_adaln"))
        if name.endswith("rope.freqs"):
            p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))
        elif is_norm_weight:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return module


def tiny_xut(seed: int = 0, config: XUTConfig = TINY_XUT) -> XUT:
    return reinit_(XUT(config, dtype=torch.float32), seed).eval()


def tiny_qwen3(seed: int = 1, config: dict | None = None):
    from transformers import Qwen3Model

    torch.manual_seed(seed)  # transformers initialises from the global RNG; reinit_ overwrites it anyway
    model = Qwen3Model(make_qwen3_config(config or TINY_QWEN3))
    return reinit_(model, seed).eval()


def tiny_vae(seed: int = 2, config: VAEConfig = TINY_VAE) -> AutoencoderKL:
    return reinit_(AutoencoderKL(config), seed).eval()


def write_tiny_hdm(
    folder: str | os.PathLike,
    seed: int = 0,
    *,
    ckpt_name: str = "tiny-hdm.safetensors",
    te_name: str = "tiny-qwen3",
    te_in_ckpt: bool = False,
) -> dict[str, Path]:
    """Write a tiny all-in-one HDM checkpoint and a tiny Qwen3 folder; returns their paths.

    ``{"ckpt": <folder>/<ckpt_name>, "te": <folder>/<te_name>/}``. With ``te_in_ckpt`` the
    Qwen3 weights also go into the checkpoint as ``te.text_models.0.*`` (trainer layout).
    """
    return write_random_hdm(folder, seed, ckpt_name=ckpt_name, te_name=te_name, te_in_ckpt=te_in_ckpt)


def write_random_hdm(
    folder: str | os.PathLike,
    seed: int = 0,
    *,
    xut_config: XUTConfig = TINY_XUT,
    qwen3_config: dict | None = None,
    vae_config: VAEConfig = TINY_VAE,
    dtype: torch.dtype = torch.float32,
    ckpt_name: str = "tiny-hdm.safetensors",
    te_name: str = "tiny-qwen3",
    te_in_ckpt: bool = False,
) -> dict[str, Path]:
    """:func:`write_tiny_hdm` for any architecture and dtype.

    With ``xut_config=HDM_XUT_SMALL``, ``qwen3_config=qwen3_config_dict()`` and
    ``vae_config=SDXL_VAE`` in fp16 this writes random weights in the exact layout and size of
    the released files (benchmarks use it). Models are built one at a time to bound memory.
    """
    folder = Path(folder)
    qwen3_config = qwen3_config or TINY_QWEN3

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() and not k.endswith("time_emb.freqs") else v for k, v in sd.items()}

    tensors = {f"unet.model.{k}": v for k, v in cast(tiny_xut(seed, xut_config).state_dict()).items()}
    tensors.update({f"vae.{k}": v for k, v in cast(tiny_vae(seed + 2, vae_config).state_dict()).items()})
    tensors["vae_mean"] = torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1)
    tensors["vae_std"] = torch.tensor(LATENTS_STD).view(1, 4, 1, 1)
    te_sd = {k: v for k, v in cast(tiny_qwen3(seed + 1, qwen3_config).state_dict()).items() if "rotary_emb" not in k}
    if te_in_ckpt:
        tensors.update({f"te.text_models.0.{k}": v for k, v in te_sd.items()})
    ckpt = save_safetensors(tensors, folder / ckpt_name)
    del tensors
    te_dir = folder / te_name
    save_safetensors({f"model.{k}": v for k, v in te_sd.items()}, te_dir / "model.safetensors")
    (te_dir / "config.json").write_text(json.dumps({"model_type": "qwen3", **qwen3_config}, indent=2))
    return {"ckpt": ckpt, "te": te_dir}
