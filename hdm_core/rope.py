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
        rotated = torch.view_as_complex(pairs.to(torch.promote_types(x.dtype, torch.float32))) * cis
        x.copy_(torch.view_as_real(rotated).flatten(-2))


class RopeTables:
    """The rotation factors of one forward pass, per :class:`AxialRoPE` module.

    Tables cover the first ``num_img`` tokens of a sequence (the image tokens); the text
    tokens after them are at (0, 0) and stay unrotated. :meth:`gather` gives the tables of
    a TREAD-routed subset of image tokens.
    """

    def __init__(self, tables: dict[AxialRoPE, torch.Tensor], num_img: int) -> None:
        self.tables = tables
        self.num_img = num_img

    def __getitem__(self, rope: AxialRoPE) -> torch.Tensor:
        return self.tables[rope]

    def gather(self, idx: torch.Tensor) -> "RopeTables":
        b, k = idx.shape

        def pick(cis: torch.Tensor) -> torch.Tensor:
            cis = cis.expand(b, *cis.shape[1:])
            return torch.gather(cis, 1, idx[:, :, None, None].expand(-1, -1, *cis.shape[2:]))

        return RopeTables({rope: pick(cis) for rope, cis in self.tables.items()}, k)

    def rotate_(self, rope: AxialRoPE, x: torch.Tensor) -> None:
        """Rotate the image tokens of ``x`` ``[B, N, ..., H, D]`` in place (dims between N and H broadcast)."""
        cis = self.tables[rope]
        extra = x.ndim - 4  # e.g. the q/k axis of a packed qkv
        cis = cis.view(cis.shape[0], cis.shape[1], *([1] * extra), *cis.shape[2:])
        rotate_(x[:, : self.num_img], cis)


def build_rope_tables(ropes: list[AxialRoPE], pos: torch.Tensor) -> RopeTables:
    """Tables for every module in ``ropes`` at image positions ``pos`` ``[B, L, 2]``, in one pass."""
    if not ropes:
        return RopeTables({}, pos.shape[1])
    freqs = torch.stack([r.freqs.to(pos.device) for r in ropes])
    cis = rope_cis(pos, freqs)
    return RopeTables(dict(zip(ropes, cis.unbind(0))), pos.shape[1])
