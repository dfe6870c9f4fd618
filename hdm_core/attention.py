"""The attention kernel interface XUT calls, and its default.

An attention function takes ``q, k, v`` as ``[B, heads, N, dim_head]`` plus keyword
arguments ``mask`` (``None`` or a boolean ``[B, 1, 1, Nk]`` key mask, True = attend) and
``transformer_options`` (ComfyUI's per-call dict; ignored here), and returns
``[B, N, heads·dim_head]``. ComfyUI's ``optimized_attention(..., skip_reshape=True)``
has exactly this shape contract, so its backends (sage, flash, xformers, split) drop in.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F


class AttentionFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor: ...


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    transformer_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """PyTorch scaled-dot-product attention, default ``1/sqrt(dim_head)`` scale."""
    b, h, n, d = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, h * d)


AttentionLike = Callable[..., torch.Tensor]
