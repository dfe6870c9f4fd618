"""Axial rotary position embedding with learned per-head frequencies.

XUT rotates adjacent channel pairs ``(2j, 2j+1)`` of every head. Pairs alternate between
the y and x axis (``axis = j mod 2``) and each consecutive y/x pair shares the frequency
index ``j // 2``; the whole head dimension is rotated. Frequencies are *learned*
log-frequencies (``exp`` is applied at use), one set per head, initialised to
``linspace(log π, log 5π)``. Text tokens sit at position (0, 0), i.e. are not rotated.

A pair ``(a, b)`` rotated by angle θ is the complex product ``(a + ib)·e^{iθ}``, so the
rotation tables are complex (``cis``) and applying them is one multiply. Angles are
computed in at least float32: position × frequency products reach tens of radians.
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


def rope_cis(pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotation factors ``e^{iθ}`` for positions ``[B, L, 2]`` (y, x) and log-frequencies.

    ``freqs`` is ``[H, D/4, 2]`` (one module) or ``[M, H, D/4, 2]`` (M modules at once);
    the result is complex ``[B, L, H, D/2]`` or ``[M, B, L, H, D/2]``.
    """
    dtype = torch.promote_types(pos.dtype, torch.float32)
    # [..., H, D/4, 2] → [..., H, D/2]: pair j uses freqs[h, j // 2, j % 2].
    f = freqs.to(device=pos.device, dtype=dtype).exp().flatten(-2)
    # Positions repeated as y, x, y, x, … to line up with the pairs.
    p = pos.to(dtype).repeat(1, 1, f.shape[-1] // 2)
    angle = p[..., None, :] * f[..., None, None, :, :]
    return torch.polar(torch.ones_like(angle), angle)


def rotate_(x: torch.Tensor, cis: torch.Tensor) -> None:
    """Rotate ``x`` ``[..., H, D]`` **in place** by complex ``cis`` ``[..., H, D/2]``.

    ``x`` is usually a slice of a projection output (e.g. the image tokens of q and k),
    so rotating in place avoids copying the whole sequence. Half-precision inputs are
    rotated in float32 and written back.
    """
    pairs = x.unflatten(-1, (-1, 2))
    if x.dtype in (torch.float32, torch.float64) and cis.dtype == (
        torch.complex64 if x.dtype == torch.float32 else torch.complex128
    ):
        torch.view_as_complex(pairs).mul_(cis)
    else:
        # one widened copy, rotated in place and written back (no second complex temporary)
        wide = torch.view_as_complex(pairs.to(torch.promote_types(x.dtype, torch.float32), copy=True))
        if wide.dtype == torch.promote_types(wide.dtype, cis.dtype):
            wide.mul_(cis)
        else:  # e.g. a float64 table for a half-precision x
            wide = wide * cis
        x.copy_(torch.view_as_real(wide).flatten(-2))


class RopeTables:
    """The rotation factors of one forward pass, per :class:`AxialRoPE` module.

    Tables cover the image tokens (the first ``num_img`` tokens of a sequence); the text
    tokens after them are at (0, 0) and stay unrotated. A table is computed when a block
    first asks for it; with ``keep=True`` it is also remembered, so a sampler calling the
    model again at the same positions skips the trigonometry (on CPU ~4% of a forward pass,
    for ~100 MB at 512 px). :meth:`gather` gives the tables of a TREAD-routed subset.
    """

    def __init__(self, pos: torch.Tensor, keep: bool = False, idx: torch.Tensor | None = None,
                 tables: dict[AxialRoPE, torch.Tensor] | None = None) -> None:
        self.pos = pos
        self.keep = keep
        self.idx = idx
        self.tables = tables if tables is not None else {}

    @property
    def num_img(self) -> int:
        return self.idx.shape[1] if self.idx is not None else self.pos.shape[1]

    def __getitem__(self, rope: AxialRoPE) -> torch.Tensor:
        cis = self.tables.get(rope)
        if cis is None:
            cis = rope_cis(self.pos, rope.freqs)
            if self.keep:
                self.tables[rope] = cis
        if self.idx is not None:
            b = self.idx.shape[0]
            cis = cis.expand(b, *cis.shape[1:])
            cis = torch.gather(cis, 1, self.idx[:, :, None, None].expand(-1, -1, *cis.shape[2:]))
        return cis

    def gather(self, idx: torch.Tensor) -> "RopeTables":
        """The tables of the image tokens ``idx`` ``[B, K]`` (sharing this object's kept tables)."""
        return RopeTables(self.pos, self.keep, idx, self.tables)

    def rotate_(self, rope: AxialRoPE, *xs: torch.Tensor) -> None:
        """Rotate the image tokens of each ``x`` ``[B, N, ..., H, D]`` in place (dims between N and H broadcast).

        Several tensors (cross-attention's q and k) share one lookup of the table.
        """
        table = self[rope]
        for x in xs:
            extra = x.ndim - 4  # e.g. the q/k axis of a packed qkv
            cis = table.view(table.shape[0], table.shape[1], *([1] * extra), *table.shape[2:])
            rotate_(x[:, : self.num_img], cis)
