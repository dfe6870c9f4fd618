"""XUT forward speed and memory on CPU: the measuring stick for performance work.

The released 343M config with random weights, batch 1, 256 text tokens, latents 64×64
(512 px) and 96×96 (768 px), in fp32 and bf16. Each (dtype, size) runs in a fresh process so
peak RSS (``ru_maxrss``) belongs to that configuration alone. Prints median and min of N
timed forwards after warm-up.

    python benchmarks/xut_forward.py                 # defaults: 3 runs, fp32 + bf16, 64 + 96
    python benchmarks/xut_forward.py --runs 5 --sizes 64 --dtypes bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))  # hdm_core only; this script never imports the ComfyUI nodes
    import torch

    from hdm_core import HDM_XUT_SMALL, XUT

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, DTYPES[args.dtype])
    t0 = time.perf_counter()
    model = XUT(HDM_XUT_SMALL).eval()
    model = model.to(dtype)
    model.dtype = dtype
    build_s = time.perf_counter() - t0
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    size = args.size
    x = torch.randn(1, 4, size, size, dtype=dtype)
    ctx = torch.randn(1, args.ctx, 1024, dtype=dtype)
    t = torch.tensor([0.5])
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            start = time.perf_counter()
            out = model(x, t, ctx)
            elapsed = time.perf_counter() - start
            if i >= args.warmup:
                times.append(elapsed)
    assert torch.isfinite(out.float()).all(), "non-finite output"
    print(json.dumps({
        "times": times,
        "build_s": build_s,
        "rss_after_build_gb": rss_model,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="timed forwards per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="latent sizes (pixels / 8)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--ctx", type=int, default=256, help="text tokens")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--worker", "--dtype", dtype, "--size", str(size),
                   "--runs", str(args.runs), "--warmup", str(args.warmup), "--ctx", str(args.ctx),
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                raise SystemExit(f"worker failed for {dtype} {size}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append((dtype, size, r))

    load = os.getloadavg()[0]
    print(f"XUT forward, 343M random weights, CPU, batch 1, {args.ctx} text tokens, "
          f"{rows[0][2]['threads']} threads, torch {rows[0][2]['torch']}, 1-min load avg {load:.1f}")
    print()
    print("| dtype | latent (image) | tokens | median (s) | min (s) | runs | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dtype, size, r in rows:
        ts = r["times"]
        tokens = f"{(size // 2) ** 2} img + {args.ctx} txt"
        print(f"| {dtype} | 4×{size}×{size} ({size * 8} px) | {tokens} | {statistics.median(ts):.2f} | "
              f"{min(ts):.2f} | {len(ts)} | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
