"""Measure HDM's ``memory_usage_factor`` for ComfyUI (nodes/model.py: HDMConfig).

ComfyUI reserves ``area · dtype_size · 0.01 · memory_usage_factor`` MiB of activation memory
for one model call when it runs a memory-efficient attention kernel (xformers, PyTorch
flash/efficient SDPA, sage), with ``area = batch · latent_height · latent_width``
(``BaseModel.memory_required``); the same factor scales its fallback estimate
``area · 0.15 · factor`` MiB for the split/sub-quadratic kernels.

Method: the released architecture (``hdm_core.HDM_XUT_SMALL``, 343M) runs one forward pass
on the ``meta`` device (no real memory, no compute) under a ``TorchDispatchMode`` that
tracks the bytes of every live tensor storage the pass creates; weights are excluded
(ComfyUI accounts for them separately). Attention is the shape-only stand-in of a
memory-efficient kernel (output ``[B, N, H·D]`` plus its log-sum-exp row statistics), so
the ``N²`` score matrix a fused kernel never materialises is not counted. The factor is the
peak over the measured sizes of ``peak_bytes / (area · dtype_size · 0.01 · 2**20)``, with a
256-token prompt (HDM's training context length; longer prompts are rare). Run::

    python benchmarks/measure_memory_factor.py

Results on torch 2.14.1 (fp16, batch 1, 256 text tokens; the factor falls slowly with size
because per-model constants are amortised)::

          image  tokens  peak MiB  factor
      512x512      1024      47.6   0.580
      768x768      2304      95.1   0.516
    1024x1024      4096     161.6   0.493
     960x1280      4800     187.7   0.489
     800x1440      4500     176.6   0.491
    2048x2048     16384     617.8   0.471

``HDMConfig.memory_usage_factor`` ships the largest, rounded up: 0.6. This is the tensors'
own peak; a GPU allocator adds fragmentation and kernel workspaces on top, which was not
measured here (no GPU was available), so treat 0.6 as a lower bound to re-check with
``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

if __name__ == "__main__":  # run as a script: use this checkout's hdm_core
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hdm_core  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live storages created by ops inside the mode (weights/inputs excluded)."""

    def __init__(self, exclude=()) -> None:
        super().__init__()
        # Storages that exist before the pass (weights, inputs): views of them cost nothing.
        self.exclude = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live and ref.cdata not in self.exclude:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def flash_like_attention(q, k, v, *, mask=None, transformer_options=None):
    """Shape-only memory-efficient attention: the output and the per-row softmax statistics."""
    b, h, n, d = q.shape
    q.new_empty(b, h, n, dtype=torch.float32)  # log-sum-exp, freed right away like the kernel's
    return q.new_empty(b, n, h * d)


def measure(height_px: int, width_px: int, text_tokens: int = 256, dtype=torch.float16, batch: int = 1) -> tuple[int, float]:
    cfg = hdm_core.HDM_XUT_SMALL
    with torch.device("meta"):
        model = hdm_core.XUT(cfg, dtype=dtype, device="meta", attention=flash_like_attention).eval()
        h, w = height_px // 8, width_px // 8
        x = torch.empty(batch, 4, h, w, dtype=dtype)
        t = torch.empty(batch, dtype=torch.float32)
        ctx = torch.empty(batch, text_tokens, cfg.ctx_dim, dtype=dtype)
        pos = torch.empty(batch, h * w, 2, dtype=torch.float32)
        tracker = LiveBytes(exclude=[*model.parameters(), *model.buffers(), x, t, ctx, pos])
        with torch.no_grad(), tracker:
            model(x, t, ctx, pos_map=pos, addon_info=0.0, tread_rate=0.0)
    area = batch * h * w
    size = torch.empty((), dtype=dtype).element_size()
    factor = tracker.peak / (area * size * 0.01 * 2**20)
    return tracker.peak, factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-tokens", type=int, default=256)
    args = parser.parse_args()
    sizes = [(512, 512), (768, 768), (1024, 1024), (1280, 960), (1440, 800), (1536, 1536), (2048, 2048)]
    print(f"{'image':>11} {'tokens':>7} {'peak MiB':>9} {'factor':>7}")
    worst = 0.0
    for hp, wp in sizes:
        peak, factor = measure(hp, wp, args.text_tokens)
        worst = max(worst, factor)
        print(f"{wp:>5}x{hp:<5} {(hp // 16) * (wp // 16):>7} {peak / 2**20:>9.1f} {factor:>7.3f}")
    print(f"memory_usage_factor (largest): {worst:.3f}")


if __name__ == "__main__":
    main()
