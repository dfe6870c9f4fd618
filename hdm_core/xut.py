"""XUT (Cross-U-Transformer), the HDM denoiser, written from the reference description.

Module and parameter names are those of the released checkpoint (minus its ``unet.model.``
prefix), so released files, LoRA/LyCORIS adapters and ComfyUI's key maps line up 1:1.
Every layer comes from ``operations`` (default ``torch.nn``; ComfyUI passes its cast-aware
ops) and attention goes through a pluggable function (default PyTorch SDPA).

Two peculiarities of the released model are reproduced on purpose:

* the residual of every sub-layer is added to the *normalised and modulated* stream,
  not to the block input (``n = norm(x)·(1+scale)+shift; x = n + f(n)·(1+gate)``);
* the adaLN vectors are split in the order (scale, shift, gate).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import tread as tread_ops
from .attention import AttentionLike, sdpa_attention
from .config import XUTConfig
from .positions import axial_grid, downsample_pos_map, extend_pos_map
from .rope import AxialRoPE, RopeTables

Modulation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _factory(dtype, device) -> dict[str, Any]:
    return {"dtype": dtype, "device": device}


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, attention, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.attention = attention
        self.qkv = operations.Linear(dim, 3 * heads * dim_head, bias=False, **_factory(dtype, device))
        self.out = operations.Linear(heads * dim_head, dim, **_factory(dtype, device))
        self.rope = AxialRoPE(heads, dim_head, **_factory(dtype, device))

    def forward(self, x, rope: RopeTables, mask=None, transformer_options=None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.dim_head)
        rope.rotate_(self.rope, qkv[:, :, :2])  # q and k of the image tokens, in place
        q, k, v = qkv.unbind(2)
        out = self.attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask, transformer_options=transformer_options
        )
        return self.out(out)


class CrossAttention(nn.Module):
    """Queries from the stream, keys/values from the final encoder output (same token layout)."""

    def __init__(self, dim, heads, dim_head, attention, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.attention = attention
        self.q = operations.Linear(dim, heads * dim_head, bias=False, **_factory(dtype, device))
        self.kv = operations.Linear(dim, 2 * heads * dim_head, bias=False, **_factory(dtype, device))
        self.out = operations.Linear(heads * dim_head, dim, **_factory(dtype, device))
        self.rope = AxialRoPE(heads, dim_head, **_factory(dtype, device))

    def forward(self, x, memory, rope: RopeTables, mask=None, transformer_options=None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.dim_head)
        kv = self.kv(memory).view(b, memory.shape[1], 2, self.heads, self.dim_head)
        # The encoder output has the stream's token layout, so k takes the same positions
        # (one table for both: computed or gathered once).
        rope.rotate_(self.rope, q, kv[:, :, :1])
        k, v = kv.unbind(2)
        out = self.attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask, transformer_options=transformer_options
        )
        return self.out(out)


class SwiGLU(nn.Module):
    """``w3(silu(a) · b)`` with ``(a, b)`` the two halves of ``w12`` (gate half first)."""

    def __init__(self, dim, hidden, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.w12 = operations.Linear(dim, 2 * hidden, **_factory(dtype, device))
        self.w3 = operations.Linear(hidden, dim, **_factory(dtype, device))

    def forward(self, x) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        if not torch.is_grad_enabled():  # inference: reuse the projection's buffer
            return self.w3(F.silu(a, inplace=True).mul_(b))
        return self.w3(F.silu(a) * b)


class AdaLN(nn.Module):
    """RMSNorm whose scale/shift come from the shared adaLN vectors (no Linear of its own)."""

    def __init__(self, dim, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.norm = operations.RMSNorm(dim, eps=1e-6, **_factory(dtype, device))

    def forward(self, x, scale1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        if not torch.is_grad_enabled():
            return n.mul_(scale1).add_(shift)
        return torch.addcmul(shift, n, scale1).to(n.dtype)


def gated_residual(n: torch.Tensor, out: torch.Tensor, gate1: torch.Tensor) -> torch.Tensor:
    """``n + out·(1 + gate)``; in place on the fresh sub-layer output when no graph is recorded."""
    if not torch.is_grad_enabled():
        return out.mul_(gate1).add_(n)
    return torch.addcmul(n, out, gate1).to(n.dtype)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: XUTConfig, cross_attn: bool, attention, operations, dtype=None, device=None) -> None:
        super().__init__()
        kw = _factory(dtype, device)
        self.attn_pre_norm = AdaLN(cfg.dim, operations, **kw)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.dim_head, attention, operations, **kw)
        if cross_attn:
            self.xattn_pre_norm = AdaLN(cfg.dim, operations, **kw)
            self.xattn = CrossAttention(cfg.dim, cfg.heads, cfg.dim_head, attention, operations, **kw)
        else:
            self.xattn_pre_norm = self.xattn = None
        self.mlp_pre_norm = AdaLN(cfg.dim, operations, **kw)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_dim, operations, **kw)

    def forward(
        self,
        x: torch.Tensor,
        mods: dict[str, Modulation],
        rope: RopeTables,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        transformer_options: dict | None = None,
    ) -> torch.Tensor:
        scale1, shift, gate1 = mods["attn"]
        n = self.attn_pre_norm(x, scale1, shift)
        x = gated_residual(n, self.attn(n, rope, mask, transformer_options), gate1)
        if self.xattn is not None:
            scale1, shift, gate1 = mods["xattn"]
            n = self.xattn_pre_norm(x, scale1, shift)
            x = gated_residual(n, self.xattn(n, memory, rope, mask, transformer_options), gate1)
        scale1, shift, gate1 = mods["ffw"]
        n = self.mlp_pre_norm(x, scale1, shift)
        return gated_residual(n, self.mlp(n), gate1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_dim, dim, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.proj = operations.Conv2d(in_dim, dim, patch_size, stride=patch_size, **_factory(dtype, device))

    def forward(self, x) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class UnPatch(nn.Module):
    def __init__(self, patch_size, dim, out_dim, operations, dtype=None, device=None) -> None:
        super().__init__()
        self.patch_size, self.out_dim = patch_size, out_dim
        self.proj = operations.Linear(dim, patch_size * patch_size * out_dim, **_factory(dtype, device))

    def forward(self, x, height: int, width: int) -> torch.Tensor:
        p, c = self.patch_size, self.out_dim
        b = x.shape[0]
        # Features are ordered (row-in-patch, col-in-patch, channel), channel fastest.
        x = self.proj(x).view(b, height // p, width // p, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of patches covering a ``height × width`` latent (padded up to the grid).

    Every front-end counts image tokens (e.g. for TREAD keep-masks) with this, so a latent
    whose sides are not multiples of the patch size gets the same token count everywhere.
    """
    return -(-height // patch_size), -(-width // patch_size)


def pad_to_patch_size(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom/right to multiples of ``patch_size`` (``x`` itself if none needed).

    The rule of ComfyUI's DiT families (``comfy.ldm.common_dit.pad_to_patch_size``):
    circular padding, so the added rows/columns are copies of the first ones. With a 2×2
    patch at most one latent row and column are added, and every patch still covers at
    least one real latent cell. The model output is cropped back (:meth:`XUT.forward`).
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular")


def island_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Parameter dtype of the conditioning path for a model of ``dtype``: at least float32.

    float64 stays float64; everything narrower — fp16, bf16 and the fp8 storage dtypes ComfyUI's
    ``weight_dtype`` gives, which ``torch.promote_types`` refuses to promote — gets float32.
    """
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    return torch.float64 if dtype == torch.float64 else torch.float32


#: State-dict prefixes of the conditioning path, whose weights stay at least float32.
FLOAT32_PREFIXES = ("time_emb.", "addon_info_embs_proj.", "shared_adaln_attn.", "shared_adaln_xattn.", "shared_adaln_ffw.")


class Float32Sequential(nn.Sequential):
    """A Sequential whose floating weights stay float32 through any cast of the model.

    It holds the conditioning path (timestep and aspect projections, the shared adaLN MLPs)
    that makes the per-channel ``1 + scale``, ``shift`` and ``1 + gate`` every block applies.
    In bf16 their rounding (``1 + g`` to 2^-8) is systematic and shared by all blocks; keeping
    the path in float32 halved the bf16 output error of the 343M model (max-abs relative, vs
    float32: 5.9% → 2.9% at 512 px on a CPU, 5.6% → 3.4% at 1024 px on a GPU; ``benchmarks/``). It runs on one vector per sample, so the cost is the memory of its
    weights (about 15% of the parameters) at 4 instead of 2 bytes. Device moves and casts to
    float32/float64 apply; casts below float32 do not (the float32 values are restored exactly,
    not rounded and widened).
    """

    def _apply(self, fn, recurse=True):
        before = {id(p): p.data for p in self.parameters() if p.dtype in (torch.float32, torch.float64)}
        super()._apply(fn, recurse)
        for p in self.parameters():
            old = before.get(id(p))
            if old is not None and p.is_floating_point() and torch.finfo(p.dtype).bits < 32:
                p.data = old.to(device=p.device, dtype=torch.float32)
        return self


class TimestepEmbedding(nn.Module):
    """``Mish(Linear(cat(cos, sin)(1000·t·freqs)))``; ``freqs`` is a persistent buffer.

    Released files carry an fp16-rounded copy of ``freqs`` that the model was used with, so
    the loader keeps the file's values. The buffer is held in float32 and the phases (up to
    1000 rad) are always computed in at least float32.
    """

    def __init__(self, dim, operations, dtype=None, device=None) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)[None]
        self.register_buffer("freqs", freqs.to(device=device), persistent=True)
        self.proj = Float32Sequential(operations.Linear(dim, dim, **_factory(island_dtype(dtype), device)), nn.Mish())

    def _apply(self, fn, recurse=True):
        # ``model.to(torch.bfloat16)`` would round the frequencies, shifting phases of up to
        # 1000 rad by radians; keep the buffer float32 through any cast (device moves apply).
        freqs = self.freqs
        super()._apply(fn, recurse)
        if self.freqs.dtype != freqs.dtype and freqs.dtype in (torch.float32, torch.float64):
            self.freqs = freqs.to(device=self.freqs.device)
        return self

    def forward(self, t: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[B, 1, dim]`` embedding in at least float32 (the conditioning path's dtype)."""
        phase_dtype = island_dtype(dtype)
        t = t.to(device, phase_dtype).reshape(-1, 1)
        if t.shape[0] == 1 and batch != 1:
            t = t.expand(batch, 1)
        if t.shape[0] != batch:
            raise ValueError(f"got {t.shape[0]} timesteps for a batch of {batch}")
        phase = (t * 1000) * self.freqs.to(device, phase_dtype)
        emb = torch.cat([phase.cos(), phase.sin()], dim=-1)
        return self.proj(emb)[:, None, :]


class TreadTrunk(nn.Module):
    """A plain stack of blocks (``prev_tread_trns`` / ``post_tread_trns``)."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Backbone(nn.Module):
    """Encoder groups, then decoder groups whose first block cross-attends the encoder output."""

    def __init__(self, cfg: XUTConfig, attention, operations, dtype=None, device=None) -> None:
        super().__init__()
        kw = _factory(dtype, device)
        self.enc_blocks = nn.ModuleList(
            nn.ModuleList(TransformerBlock(cfg, False, attention, operations, **kw) for _ in range(cfg.enc_blocks))
            for _ in range(cfg.depth)
        )
        self.dec_blocks = nn.ModuleList(
            nn.ModuleList(TransformerBlock(cfg, j == 0, attention, operations, **kw) for j in range(cfg.dec_blocks))
            for _ in range(cfg.depth)
        )


def _adaln_mlp(dim, operations, dtype=None, device=None) -> nn.Sequential:
    kw = _factory(island_dtype(dtype), device)
    return Float32Sequential(
        operations.LayerNorm(dim, eps=1e-5, **kw),
        operations.Linear(dim, 4 * dim, **kw),
        nn.Mish(),
        operations.Linear(4 * dim, 3 * dim, **kw),
    )


class XUT(nn.Module):
    """The HDM XUT denoiser: ``model(x, t, ctx) → velocity`` (``noise − x0``) for ``t ∈ [0, 1]``."""

    def __init__(
        self,
        config: XUTConfig | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        operations: Any = None,
        attention: AttentionLike | None = None,
        **config_kwargs: Any,
    ) -> None:
        super().__init__()
        if config is None:
            config = XUTConfig.from_dict(config_kwargs)
        elif config_kwargs:
            raise TypeError("pass either a config or config keyword arguments, not both")
        self.config = cfg = config
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        operations = operations if operations is not None else nn
        attention = attention if attention is not None else sdpa_attention
        kw = _factory(dtype, device)

        self.in_patch = PatchEmbed(cfg.patch_size, cfg.input_dim, cfg.dim, operations, **kw)
        self.time_emb = TimestepEmbedding(cfg.dim, operations, **kw)
        if cfg.addon_info_embs_dim:
            kw32 = _factory(island_dtype(dtype), device)
            self.addon_info_embs_proj = Float32Sequential(
                operations.Linear(cfg.addon_info_embs_dim, cfg.dim, **kw32),
                nn.Mish(),
                operations.Linear(cfg.dim, cfg.dim, **kw32),
            )
        else:
            self.addon_info_embs_proj = None
        self.shared_adaln_attn = _adaln_mlp(cfg.dim, operations, **kw)
        self.shared_adaln_xattn = _adaln_mlp(cfg.dim, operations, **kw)
        self.shared_adaln_ffw = _adaln_mlp(cfg.dim, operations, **kw)
        self.ctx_proj = operations.Linear(cfg.ctx_dim, cfg.dim, **kw)

        tc = cfg.tread_config
        if tc is not None:
            self.prev_tread_trns = TreadTrunk(
                TransformerBlock(cfg, False, attention, operations, **kw) for _ in range(tc.prev_trns_depth)
            )
        else:
            self.prev_tread_trns = None
        self.backbone = Backbone(cfg, attention, operations, **kw)
        if tc is not None:
            self.post_tread_trns = TreadTrunk(
                TransformerBlock(cfg, False, attention, operations, **kw) for _ in range(tc.post_trns_depth)
            )
        else:
            self.post_tread_trns = None
        self.out_patch = UnPatch(cfg.patch_size, cfg.dim, cfg.input_dim, operations, **kw)
        self.gradient_checkpointing = False
        self._rope_cache: tuple | None = None
        self._compiled_denoise = None  # compile_denoiser()
        self.keep_rope_tables: bool | None = None  # None: keep on CPU, recompute per block elsewhere

    # ------------------------------------------------------------------ helpers
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer block in the backward pass (training memory saver)."""
        self.gradient_checkpointing = enabled

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every transformer block in place (GPU speed option).

        Per block, not the whole model: the routing, position tables and masks around the
        blocks stay eager Python, and ``nn.Module.compile`` keeps the state-dict names (no
        ``_orig_mod.``). Shapes follow torch's default (a second prompt length or image size
        recompiles once with dynamic shapes), so varying prompts do not exhaust the recompile
        limit. Measured in ``benchmarks/gpu.py``.
        """
        if self.keep_rope_tables is None:
            # Kept tables fill a dict block by block, and each compiled block would recompile
            # for every state of it (hitting dynamo's recompile limit on CPU): compute per block.
            self.keep_rope_tables = False
        for m in self.modules():
            if isinstance(m, TransformerBlock):
                m.compile(**compile_kwargs)

    def compile_denoiser(self, **compile_kwargs: Any) -> bool:
        """CUDA graphs for whole inference calls at fixed shapes (GPU speed option; off by default).

        ``torch.compile`` of the forward computation with ``mode="reduce-overhead"`` and
        ``dynamic=False`` unless given: a sampler calls the model many times at one shape, and
        replaying one graph removes the per-kernel launch cost that bounds small batches.
        Used for calls on CUDA without autograd; everything else (CPU, training) keeps the
        eager path, so on a machine without CUDA this changes nothing and returns ``False``.
        Outputs are cloned out of the graph's memory. Measured in ``benchmarks/gpu.py --cuda-graphs``.
        """
        if not torch.cuda.is_available() or next(self.parameters()).device.type != "cuda":
            return False
        compile_kwargs.setdefault("mode", "reduce-overhead")
        compile_kwargs.setdefault("dynamic", False)
        self._compiled_denoise = torch.compile(self._denoise, **compile_kwargs)
        return True

    def set_attention(self, attention: AttentionLike | None) -> None:
        """Swap the attention kernel of every layer (``None`` = PyTorch SDPA)."""
        fn = attention if attention is not None else sdpa_attention
        for m in self.modules():
            if isinstance(m, (SelfAttention, CrossAttention)):
                m.attention = fn

    def patch_positions(
        self, pos_map: torch.Tensor | None, batch: int, height: int, width: int, device, dtype=torch.float32
    ) -> torch.Tensor:
        """Position map at patch resolution, ``[B or 1, L, 2]`` in ``dtype`` (at least float32).

        ``height × width`` is the real (unpadded) latent size. ``None`` gives the exact
        patch-resolution grid. A map at latent resolution (``[B, H·W, 2]``) is downsampled
        with antialiasing, as the reference does; one already at patch resolution
        (``[B, L, 2]``, ``L`` = :func:`patch_grid`'s count) is used as is.

        Sizes off the patch grid: the real latent cells keep the positions of the real
        image (its aspect box from the real ``H × W``, the camera map as given), and the
        padded cells (:func:`pad_to_patch_size`) continue that map linearly past the
        bottom/right edge (:func:`~hdm_core.positions.extend_pos_map`); the patch positions
        are then taken from the extended map exactly as for an on-grid size (antialiased
        downsampling of a given map, patch centres without one).
        """
        p = self.config.patch_size
        h, w = patch_grid(height, width, p)
        padded = (h * p, w * p) != (height, width)
        dtype = torch.promote_types(dtype, torch.float32)
        if pos_map is None:
            if not padded:
                return axial_grid(h, w, device=device, dtype=dtype)[None]
            cells = extend_pos_map(axial_grid(height, width, device=device, dtype=dtype)[None], height, width, h * p, w * p)
            centres = F.avg_pool2d(cells.reshape(1, h * p, w * p, 2).permute(0, 3, 1, 2), p)
            return centres.permute(0, 2, 3, 1).reshape(1, h * w, 2)
        if pos_map.ndim == 2:
            pos_map = pos_map[None]
        if pos_map.ndim != 3 or pos_map.shape[-1] != 2 or pos_map.shape[0] not in (1, batch):
            raise ValueError(
                f"pos_map must be [B, H*W, 2] (latent resolution) or [B, {h * w}, 2] (patch resolution) "
                f"with B = 1 or {batch}; got {list(pos_map.shape)}"
            )
        pos_map = pos_map.to(device, torch.promote_types(pos_map.dtype, dtype))
        if pos_map.shape[1] == height * width and p != 1:
            if padded:
                pos_map = extend_pos_map(pos_map, height, width, h * p, w * p)
            return downsample_pos_map(pos_map, h * p, w * p, p)
        if pos_map.shape[1] == h * w:
            return pos_map
        raise ValueError(
            f"pos_map has {pos_map.shape[1]} positions; expected {height * width} (latent {height}x{width}) "
            f"or {h * w} (patches {h}x{w})"
        )

    def _run_blocks(self, blocks, h, mods, rope, memory=None, mask=None, transformer_options=None) -> torch.Tensor:
        for block in blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, mods, rope, memory, mask, transformer_options, use_reentrant=False)
            else:
                h = block(h, mods, rope, memory, mask, transformer_options)
        return h

    def _backbone(self, h, mods, rope, mask, transformer_options) -> torch.Tensor:
        for group in self.backbone.enc_blocks:
            h = self._run_blocks(group, h, mods, rope, mask=mask, transformer_options=transformer_options)
        memory = h
        for group in self.backbone.dec_blocks:
            h = self._run_blocks(group, h, mods, rope, memory, mask, transformer_options)
        return h

    def rope_tables(self, pos: torch.Tensor) -> RopeTables:
        """Rotation tables of every block at image positions ``pos``.

        On CPU (``keep_rope_tables=None``, the default) the tables are kept between calls
        while no gradient is recorded and the positions and RoPE parameters are unchanged:
        a sampler calls the model many times at the same positions. Elsewhere each block's
        table is computed when needed and dropped, which keeps GPU memory flat.
        """
        keep = self.keep_rope_tables if self.keep_rope_tables is not None else pos.device.type == "cpu"
        # Under torch.compile (e.g. ComfyUI's TorchCompileModel on the whole model) the cache's
        # content check is a data-dependent graph break, and the graph recomputes tables cheaply.
        if torch.is_grad_enabled() or not keep or torch.compiler.is_compiling():
            return RopeTables(pos)
        ropes = [m for m in self.modules() if isinstance(m, AxialRoPE)]
        # Compare contents, not version counters: inference tensors (ComfyUI loads and patches
        # models under inference mode) have none.
        freqs = torch.stack([r.freqs.to(pos.device) for r in ropes]) if ropes else pos.new_zeros(0)
        key = (pos.shape, pos.dtype, pos.device, freqs.dtype, torch.is_inference_mode_enabled())
        cached = self._rope_cache
        if cached is not None and cached[0] == key and torch.equal(cached[1], pos) and torch.equal(cached[2], freqs):
            return cached[3]
        tables = RopeTables(pos.clone(), keep=True)
        self._rope_cache = (key, tables.pos, freqs, tables)
        return tables

    def clear_rope_cache(self) -> None:
        self._rope_cache = None

    def _tread_indices(self, batch, num_tokens, tread_rate, tread_mask, generator, device) -> torch.Tensor | None:
        if tread_mask is not None:
            if tread_mask.shape != (batch, num_tokens):
                raise ValueError(f"tread_mask must be [{batch}, {num_tokens}], got {list(tread_mask.shape)}")
            idx = tread_ops.mask_to_indices(tread_mask.to(device))
        else:
            if tread_rate is None:
                tread_rate = self.config.tread_config.dropout_ratio if self.training and self.config.tread_config else 0.0
            tread_rate = float(tread_rate)
            if tread_rate <= 0.0:
                return None
            idx = tread_ops.random_keep_indices(batch, num_tokens, tread_rate, generator, device)
        if self.prev_tread_trns is None:
            raise ValueError("this XUT has no TREAD blocks, so token routing (tread_rate / tread_mask) is unavailable")
        return idx

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        ctx: torch.Tensor | None = None,
        pos_map: torch.Tensor | None = None,
        addon_info: torch.Tensor | float | None = None,
        tread_rate: float | None = None,
        *,
        tread_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        ctx_mask: torch.Tensor | None = None,
        transformer_options: dict | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity ``noise − x0`` for latents ``x`` ``[B, C, H, W]``.

        Any ``H, W`` of at least one patch: sides off the patch grid are padded
        (:func:`pad_to_patch_size`) and the output is cropped back to ``H × W``; positions
        and the default aspect addon come from the real size (see :meth:`patch_positions`),
        and TREAD routes over all :func:`patch_grid` tokens (each covers a real cell).

        ``t`` in [0, 1] (``[B]``, ``[B, 1]`` or a scalar); ``ctx`` ``[B, T, ctx_dim]`` text
        features (``None`` → ``ctx_size`` zero tokens; ``T = 0`` is allowed);
        ``addon_info`` = log(width / height) per sample (``None`` → taken from ``x``'s
        shape); ``tread_rate`` > 0 routes that fraction of image tokens around the
        backbone (0 or ``None`` = off at inference; ``None`` in training mode uses the
        config's rate); ``tread_mask`` ``[B, L]`` injects the keep-mask instead;
        ``ctx_mask`` ``[B, T]`` (True = real token) masks padded text keys so prompts of
        different lengths can share a batch.
        """
        fn = self._denoise
        compiled = self._compiled_denoise
        if compiled is not None and not torch.is_grad_enabled() and x.is_cuda:
            fn = compiled
        out = fn(x, t, ctx, pos_map, addon_info, tread_rate, tread_mask=tread_mask, generator=generator,
                 ctx_mask=ctx_mask, transformer_options=transformer_options)  # fmt: skip
        # CUDA-graph outputs live in memory the next replay overwrites (the CFG pair calls twice)
        return out.clone() if fn is compiled else out

    def _denoise(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        ctx: torch.Tensor | None = None,
        pos_map: torch.Tensor | None = None,
        addon_info: torch.Tensor | float | None = None,
        tread_rate: float | None = None,
        *,
        tread_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        ctx_mask: torch.Tensor | None = None,
        transformer_options: dict | None = None,
    ) -> torch.Tensor:
        """:meth:`forward`'s computation (eager, or what :meth:`compile_denoiser` compiles)."""
        b, c, height, width = x.shape
        p = self.config.patch_size
        if height < p or width < p:
            raise ValueError(
                f"latent size {height}x{width} is smaller than one {p}x{p} patch: "
                f"images must be at least {8 * p}x{8 * p} pixels"
            )
        if c != self.config.input_dim:
            raise ValueError(f"expected {self.config.input_dim} latent channels, got {c}")
        dtype = x.dtype
        device = x.device

        # Off-grid sizes: pad to the patch grid, crop the output back (positions and the
        # aspect addon below still come from the real height x width).
        x_grid = pad_to_patch_size(x, p)
        tokens = self.in_patch(x_grid)
        num_img = tokens.shape[1]
        # RoPE angles are computed in at least float32 (float64 for a float64 model).
        pos = self.patch_positions(pos_map, b, height, width, device, dtype)

        if not torch.is_tensor(t):
            t = torch.tensor([float(t)])
        cond = self.time_emb(t, b, dtype, device)
        if self.addon_info_embs_proj is not None:
            if addon_info is None and self.config.addon_info_embs_dim == 1:
                addon_info = math.log(width / height)
            elif addon_info is None:
                raise ValueError(f"this XUT needs addon_info with {self.config.addon_info_embs_dim} values per sample")
            if not torch.is_tensor(addon_info):
                addon_info = torch.tensor([[float(addon_info)]])
            addon_info = addon_info.to(device, cond.dtype).reshape(-1, self.config.addon_info_embs_dim)
            cond = cond + self.addon_info_embs_proj(addon_info).expand(b, -1)[:, None, :]
        mods = {
            name: tuple(m(cond).chunk(3, dim=-1))
            for name, m in (
                ("attn", self.shared_adaln_attn),
                ("xattn", self.shared_adaln_xattn),
                ("ffw", self.shared_adaln_ffw),
            )
        }
        # Precompute 1 + scale and 1 + gate once; every block shares them (at least float32:
        # see Float32Sequential; in-place inference ops keep the stream in the model dtype).
        mods = {k: (1 + s, sh, 1 + g) for k, (s, sh, g) in mods.items()}

        if ctx is None:
            ctx = torch.zeros(b, self.config.ctx_size, self.config.ctx_dim, device=device, dtype=dtype)
        ctx = self.ctx_proj(ctx.to(device, dtype))
        if ctx.shape[0] != b:
            raise ValueError(f"ctx batch {ctx.shape[0]} does not match latent batch {b}")
        num_txt = ctx.shape[1]
        h = torch.cat([tokens, ctx], dim=1)
        rope = self.rope_tables(pos)

        if ctx_mask is not None and ctx_mask.shape != (b, num_txt):
            raise ValueError(f"ctx_mask must be [{b}, {num_txt}], got {list(ctx_mask.shape)}")

        def key_mask(n_img: int) -> torch.Tensor | None:
            if ctx_mask is None:
                return None
            img_keys = torch.ones(b, n_img, dtype=torch.bool, device=device)
            return torch.cat([img_keys, ctx_mask.to(device, torch.bool)], dim=1)[:, None, None, :]

        mask = key_mask(num_img)

        if self.prev_tread_trns is not None:
            h = self._run_blocks(self.prev_tread_trns.blocks, h, mods, rope, mask=mask, transformer_options=transformer_options)

        idx = self._tread_indices(b, num_img, tread_rate, tread_mask, generator, device)
        if idx is None:
            h = self._backbone(h, mods, rope, mask, transformer_options)
        else:
            keep = idx.shape[1]
            # kept image tokens then every text token, in one gather (no slice-and-cat copies)
            routed = tread_ops.gather_tokens(h, tread_ops.with_tail(idx, num_img, num_txt))
            routed = self._backbone(routed, mods, rope.gather(idx), key_mask(keep), transformer_options)
            h = tread_ops.merge_routed(h, idx, routed, num_img)

        if self.post_tread_trns is not None:
            h = self._run_blocks(self.post_tread_trns.blocks, h, mods, rope, mask=mask, transformer_options=transformer_options)
        out = self.out_patch(h[:, :num_img], x_grid.shape[-2], x_grid.shape[-1])
        if x_grid is not x:
            out = out[:, :, :height, :width].contiguous()
        return out
