"""Axial rotary position embedding with learned per-head frequencies.

XUT rotates adjacent channel pairs ``(2j, 2j+1)`` of every head. Pairs alternate between
the y and x axis (``axis = j mod 2``) and each consecutive y/x pair shares the frequency
index ``j // 2``; the whole head dimension is rotated. Frequencies are *learned*
log-frequencies (``exp`` is applied at use), one set per head, initialised to
``linspace(log π, log 5π)``. Angles and the rotation are computed in at least float32:
position × frequency products reach tens of radians, too many for bf16/fp16 phases.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AxialRoPE(nn.Module):
    """Holds ``freqs`` ``[heads, dim_head/4, 2]`` (state-dict name ``rope.freqs``)."""

    def __init__(self, heads: int, dim_head: int, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        if dim_head % 4:
            raise ValueError(f"axial RoPE needs dim_head divisible by 4, got {dim_head}")
        self.freqs = nn.Parameter(torch.empty(heads, dim_head // 4, 2, dtype=dtype, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.freqs.shape[1]
        init = torch.linspace(math.log(math.pi), math.log(5 * math.pi), n)
        with torch.no_grad():
            self.freqs.copy_(init[None, :, None].expand_as(self.freqs))

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos`` ``[B, N, 2]`` (y, x) → ``cos, sin`` ``[B, N, heads, dim_head/2]``."""
        return rope_cos_sin(pos, self.freqs)


def rope_cos_sin(pos: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables for positions ``[B, N, 2]`` and log-frequencies ``[H, D/4, 2]``."""
    dtype = torch.promote_types(pos.dtype, torch.float32)
    heads = freqs.shape[0]
    # [H, D/4, 2] → [H, D/2]: index j = 2·(j//2) + axis, so pair j uses freqs[h, j//2, j % 2].
    f = freqs.to(device=pos.device, dtype=dtype).exp().reshape(heads, -1)
    # Positions repeated as y, x, y, x, … to line up with the pairs.
    p = pos.to(dtype).repeat(1, 1, f.shape[-1] // 2)
    angle = p[:, :, None, :] * f[None, None, :, :]
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` ``[B, N, H, D]`` by tables ``[B, N, H, D/2]``."""
    dtype = x.dtype
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return out.flatten(-2).to(dtype)
