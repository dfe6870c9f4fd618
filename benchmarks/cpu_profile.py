"""Where CPU time goes: this CPU's matmul throughput per dtype, and a profile of one XUT forward.

The speed targets of the CPU benchmarks assume native bf16 matrix units (AMX or AVX512-BF16),
where a bf16 matmul runs several times faster than fp32. This script shows what the machine at
hand has and what that means for HDM:

1. the CPU's bf16 capabilities as PyTorch sees them;
2. GFLOP/s of ``x @ W`` in fp32 and bf16 at the XUT's own shapes (a 512-px forward has 1,280
   tokens — 1,024 image + 256 text — of width 1,024; the MLP is 1,024 → 2×3,072 → 1,024);
3. the top operators of one fp32 forward of the 343M model at 512 px (ours, or the reference
   with ``--reference``), and the share of time spent in matrix products and attention.

If the matrix products are most of the time, no rewrite of the rest can make a forward much
faster at the same precision: the remaining lever is a faster matmul dtype, which is bf16 only
where the CPU has native bf16.

    python benchmarks/cpu_profile.py [--reference ~/src/HDM]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xut_forward import build_ours, build_reference, inputs  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "mkldnn", "aten::_mkldnn")
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "_efficient_attention")


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Throughput of ``F.linear`` (what every XUT projection runs) for ``[m, k] → [m, n]``."""
    x, w, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w, b)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 2:
            torch.nn.functional.linear(x, w, b)
            runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=None, help="also profile the reference (local checkout)")
    p.add_argument("--size", type=int, default=64, help="latent side (default 64 = 512 px)")
    args = p.parse_args()

    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        caps = {}
    flags = {k: bool(caps.get(k)) for k in ("avx2", "avx512", "avx512_bf16", "amx_bf16", "amx_tile")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capabilities: {flags}")
    print("\n| linear (tokens × in → out) | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("| --- | --- | --- | --- |")
    tokens = (args.size // 2) ** 2 + 256
    for k, n in ((1024, 3 * 1024), (1024, 2 * 3072), (3072, 1024)):
        f32, b16 = gemm_gflops(tokens, k, n, torch.float32), gemm_gflops(tokens, k, n, torch.bfloat16)
        print(f"| {tokens} × {k} → {n} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}× |")

    from torch.profiler import ProfilerActivity, profile

    x, t, ctx, addon = inputs(args.size, 256)
    models = {"ours": build_ours("fp32")}
    if args.reference:
        models["reference"] = build_reference(args.reference, models["ours"].state_dict(), "fp32")
    for name, model in models.items():
        with torch.inference_mode():
            model(x, t, ctx, addon_info=addon)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                model(x, t, ctx, addon_info=addon)
                wall = time.perf_counter() - start
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        mm = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL_OPS))
        att = sum(e.self_cpu_time_total for e in events if any(a in e.key for a in ATTENTION_OPS))
        print(f"\n### {name}, fp32, latent {args.size}² ({args.size * 8} px): {wall:.2f} s; "
              f"matrix products {100 * mm / total:.0f}% and attention {100 * att / total:.0f}% of operator time\n")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
