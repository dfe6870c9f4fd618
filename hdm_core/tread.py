"""TREAD token routing: a random subset of image tokens skips the XUT backbone.

Only image tokens are candidates; text tokens always go through. With ``L`` image tokens
and rate ``r`` exactly ``keep = L - int(L·r)`` tokens per sample are kept, chosen
uniformly and independently per sample, and the backbone sees them in their original
order followed by the text tokens. Dropped tokens re-enter after the backbone with the
output of the blocks before it.

Differences from the reference, on purpose: a rate of 0 means *off* (the original treats
0 as "use the default 0.5"), and selection draws from an optional ``torch.Generator`` so
runs are reproducible without touching the global RNG. At inference every front-end
(headless pipeline, ComfyUI nodes) seeds the selection with one rule,
:func:`selection_seed`, so a seed gives the same image in each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

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


def with_tail(idx: torch.Tensor, num_img: int, num_tail: int) -> torch.Tensor:
    """``[B, K + T]``: the image-token indices ``idx`` followed by the ``T`` tokens after the image ones."""
    tail = torch.arange(num_img, num_img + num_tail, device=idx.device, dtype=idx.dtype)
    return torch.cat([idx, tail.expand(idx.shape[0], -1)], dim=1)


def merge_routed(h: torch.Tensor, idx: torch.Tensor, routed: torch.Tensor, num_img: int) -> torch.Tensor:
    """``h`` ``[B, L + T, C]`` with image rows ``idx`` and all text rows taken from the backbone output ``routed``.

    Without autograd ``h`` (a fresh activation of the forward pass) is updated in place, which
    saves two copies of the whole stream; with autograd the result is a new tensor.
    """
    keep = idx.shape[1]
    if torch.is_grad_enabled():
        img = scatter_tokens(h[:, :num_img], idx, routed[:, :keep])
        return torch.cat([img, routed[:, keep:]], dim=1)
    h[:, :num_img].scatter_(1, idx[:, :, None].expand(-1, -1, h.shape[-1]), routed[:, :keep])
    h[:, num_img:].copy_(routed[:, keep:])
    return h


# --------------------------------------------------------------------------- seeded selection
#: CFG branch numbers of :func:`selection_seed` (ComfyUI's ``cond_or_uncond`` uses the same).
COND_BRANCH = 0
UNCOND_BRANCH = 1


def selection_seed(seed: int, branch: int, row: int, t: float) -> int:
    """Seed of the TREAD token selection of one sample at one model call: HDM's one seeding rule.

    Derived from the image seed, the CFG branch (:data:`COND_BRANCH` / :data:`UNCOND_BRANCH`),
    the sample's row within its branch and the timestep (rounded to 1e-6, so the float32
    ``t`` every front-end passes gives the same key). Because it depends on nothing else —
    not on call order, not on whether the two branches run in one batch — the headless
    pipeline and ComfyUI (which batches cond and uncond when their shapes allow) choose the
    same tokens, and a seed fixes the whole image in both.
    """
    key = f"{int(seed)}:{int(branch)}:{int(row)}:{round(float(t) * 1e6)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def seeded_keep_mask(num_tokens: int, rate: float, seeds: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """``[len(seeds), num_tokens]`` boolean keep-mask (True = through the backbone), one seed per row.

    Each row keeps :func:`keep_count` tokens drawn by :func:`random_keep_indices` from a CPU
    generator seeded with its seed, so masks are the same on every device.
    """
    mask = torch.zeros(len(seeds), num_tokens, dtype=torch.bool)
    for i, s in enumerate(seeds):
        gen = torch.Generator("cpu").manual_seed(int(s))
        mask[i, random_keep_indices(1, num_tokens, rate, gen, "cpu")[0]] = True
    return mask.to(device)


@dataclass(frozen=True)
class SeededRouting:
    """TREAD routing of one CFG branch under :func:`selection_seed`'s rule.

    ``keep_mask(t, num_tokens)`` gives the ``tread_mask`` for a call of the XUT whose rows
    are samples ``0 … B−1`` of this branch at times ``t`` (``[B]`` or a scalar).
    """

    rate: float
    seed: int
    branch: int = COND_BRANCH

    def keep_mask(self, t: torch.Tensor | float, num_tokens: int, batch: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        times = t.reshape(-1).tolist() if torch.is_tensor(t) else [float(t)]
        if batch is not None and len(times) == 1:
            times = times * batch
        seeds = [selection_seed(self.seed, self.branch, row, tt) for row, tt in enumerate(times)]
        return seeded_keep_mask(num_tokens, self.rate, seeds, device)
