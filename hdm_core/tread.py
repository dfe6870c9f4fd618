"""TREAD token routing: a random subset of image tokens skips the XUT backbone.

Only image tokens are candidates; text tokens always go through. With ``L`` image tokens
and rate ``r`` exactly ``keep = L - int(L·r)`` tokens per sample are kept, chosen
uniformly and independently per sample, and the backbone sees them in their original
order followed by the text tokens. Dropped tokens re-enter after the backbone with the
output of the blocks before it.

Differences from the reference, on purpose: a rate of 0 means *off* (the original treats
0 as "use the default 0.5"), and selection draws from an optional ``torch.Generator`` so
runs are reproducible without touching the global RNG.
"""

from __future__ import annotations

import torch


def keep_count(num_tokens: int, rate: float) -> int:
    """Tokens kept out of ``num_tokens`` at drop ``rate`` (the reference's rounding)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"TREAD rate must be in [0, 1), got {rate}")
    return num_tokens - int(num_tokens * rate)


def random_keep_indices(
    batch: int,
    num_tokens: int,
    rate: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[batch, keep]`` ascending indices of kept tokens, uniform per sample."""
    keep = keep_count(num_tokens, rate)
    gen_device = generator.device if generator is not None else device
    scores = torch.rand(batch, num_tokens, generator=generator, device=gen_device)
    idx = scores.argsort(dim=1)[:, :keep]
    return idx.sort(dim=1).values.to(device)


def mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Boolean keep-mask ``[B, L]`` (1 = through the backbone) → ``[B, keep]`` ascending indices."""
    mask = mask.to(torch.bool)
    counts = mask.sum(dim=1)
    if mask.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(f"a TREAD keep-mask must keep the same number of tokens in every sample, got {counts.tolist()}")
    keep = int(counts[0]) if mask.shape[0] else 0
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order[:, :keep]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b]]`` for ``x`` ``[B, L, C]`` and ``idx`` ``[B, K]``."""
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(base: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Copy of ``base`` ``[B, L, C]`` with rows ``idx`` replaced by ``values`` ``[B, K, C]``."""
    return base.scatter(1, idx[:, :, None].expand(-1, -1, base.shape[-1]), values)
