"""XUT forward speed, memory and accuracy on CPU: ours against the reference implementation.

The released 343M config with random weights, batch 1, 256 text tokens, latents 64×64
(512 px) and 96×96 (768 px). Timing runs ours and the reference *in the same process,
alternating call by call*, on identical weights (the state-dict names are the same), so
machine load hits both alike; peak RSS (``ru_maxrss``) is measured in a fresh process per
implementation and configuration. Accuracy is the max-abs error relative to max |output|
of the reference in float32.

    python benchmarks/xut_forward.py                          # ours only: fp32 + bf16, 512 + 768 px
    python benchmarks/xut_forward.py --reference ~/src/HDM    # plus the reference, from a local checkout

``--reference`` is a local checkout of KohakuBlueleaf/HDM (its ``src/xut`` package is
imported with torch.compile, liger and xformers switched off); nothing of it is in this repo.
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


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_ours(dtype_name: str, seed: int = 0, config=None):
    """Our XUT with scaled random weights; ``config`` defaults to the released 343M one."""
    sys.path.insert(0, str(REPO))  # hdm_core only; this script never imports the ComfyUI nodes
    import torch

    from hdm_core import HDM_XUT_SMALL, XUT

    config = config if config is not None else HDM_XUT_SMALL
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = XUT(config, device="meta")
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # scaled random weights: O(1) activations in every dtype
        for name, p in model.named_parameters():
            if name.endswith("rope.freqs"):
                p.copy_(torch.linspace(1.1447, 2.7541, p.shape[1])[None, :, None].expand_as(p))
            elif p.ndim == 1:
                is_norm_weight = "norm" in name or ("adaln" in name and name.endswith(".0.weight"))
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if is_norm_weight else 0.0))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        half = config.dim // 2
        model.time_emb.freqs.copy_(torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)[None])
    dtype = getattr(torch, DTYPES[dtype_name])
    model = model.to(dtype).eval()
    model.dtype = dtype
    return model


def build_reference(path: Path, state_dict, dtype_name: str):
    import torch

    sys.path.insert(0, str(Path(path).expanduser() / "src"))
    import xut.env as env

    env.TORCH_COMPILE = env.USE_LIGER = env.USE_XFORMERS = env.USE_XFORMERS_LAYERS = env.USE_VANILLA = False
    from xut.xut import XUDiT

    from hdm_core import HDM_XUT_SMALL

    cfg = HDM_XUT_SMALL.to_dict()
    with torch.device("meta"):
        ref = XUDiT(**cfg)
    ref.load_state_dict({k: v.float() for k, v in state_dict.items()}, assign=True)
    return ref.to(getattr(torch, DTYPES[dtype_name])).eval()


def inputs(size: int, ctx_len: int, seed: int = 1):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, size, size, generator=gen)
    return x, torch.tensor([0.7]), torch.randn(1, ctx_len, 1024, generator=gen), torch.zeros(1, 1)  # addon log(1)


def worker_time(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ours = build_ours(args.dtype)
    x, t, ctx, addon = inputs(args.size, args.ctx)
    impls = {"ours": (ours, getattr(torch, DTYPES[args.dtype]))}
    if args.reference:
        impls["ref"] = (build_reference(args.reference, build_ours("fp32").state_dict(), args.ref_dtype),
                        getattr(torch, DTYPES[args.ref_dtype]))
    times = {k: [] for k in impls}
    outs = {}
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            for name, (model, dtype) in impls.items():
                start = time.perf_counter()
                out = model(x.to(dtype), t, ctx.to(dtype), addon_info=addon.to(dtype))
                elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[name].append(elapsed)
                outs[name] = out.float()
    result = {"times": times, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.accuracy:
        with torch.inference_mode():
            ref32 = build_ours("fp32")(x, t, ctx, addon_info=addon).float()
        result["rel_err"] = {k: float((o - ref32).abs().max() / ref32.abs().max()) for k, o in outs.items()}
    return result


def worker_mem(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == "ours":
        model = build_ours(args.dtype)
        dtype = getattr(torch, DTYPES[args.dtype])
    else:
        sd = build_ours("fp32").state_dict()
        model = build_reference(args.reference, sd, args.dtype)
        del sd
        dtype = getattr(torch, DTYPES[args.dtype])
    x, t, ctx, addon = inputs(args.size, args.ctx)
    with torch.inference_mode():
        model(x.to(dtype), t, ctx.to(dtype), addon_info=addon.to(dtype))
    return {"peak_rss_gb": _peak_rss_gb()}


def run_worker(args: argparse.Namespace, mode: str, **overrides) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--runs", str(args.runs), "--warmup", str(args.warmup),
           "--ctx", str(args.ctx), "--threads", str(args.threads)]
    if args.reference:
        cmd += ["--reference", str(args.reference)]
    for k, v in overrides.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not False and v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode:
        print(res.stderr, file=sys.stderr)
        raise SystemExit(f"worker {mode} {overrides} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="timed forwards per implementation and configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="latent sizes (pixels / 8)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES), help="our dtypes")
    p.add_argument("--ctx", type=int, default=256, help="text tokens")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--reference", type=Path, default=None, help="local checkout of KohakuBlueleaf/HDM")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    p.add_argument("--worker", choices=["time", "mem"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--ref-dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--accuracy", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker_time(args) if args.worker == "time" else worker_mem(args)))
        return

    rows = []  # (impl, dtype, size, times, reference times of the same run, memory, rel err, raw)
    for size in args.sizes:
        for i, dtype in enumerate(args.dtypes):
            r = run_worker(args, "time", dtype=dtype, size=size, accuracy=True)
            ref_ts = r["times"].get("ref")
            if ref_ts is not None and i == 0:
                mem = None if args.no_memory else run_worker(args, "mem", impl="ref", dtype="fp32", size=size)
                rows.append(("reference", "fp32", size, ref_ts, None, mem, r["rel_err"]["ref"], r))
            mem = None if args.no_memory else run_worker(args, "mem", impl="ours", dtype=dtype, size=size)
            rows.append(("ours", dtype, size, r["times"]["ours"], ref_ts, mem, r["rel_err"]["ours"], r))

    first = rows[0][-1]
    print(f"XUT forward, 343M random weights, CPU, batch 1, {args.ctx} text tokens, {first['threads']} threads, "
          f"torch {first['torch']}, {args.runs} timed runs after {args.warmup} warm-up, "
          f"1-min load avg at end {os.getloadavg()[0]:.1f}")
    print("Speed-ups compare with the reference fp32 timed in the same process, alternating call by call.")
    print()
    print("| impl | dtype | latent (image) | median (s) | min (s) | speed-up vs reference fp32 (median / min) "
          "| peak RSS (GB) | max-abs err / max-abs out (vs fp32) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for impl, dtype, size, ts, ref_ts, mem, err, _ in rows:
        speed = "—"
        if ref_ts is not None and impl == "ours":
            speed = f"{statistics.median(ref_ts) / statistics.median(ts):.2f}× / {min(ref_ts) / min(ts):.2f}×"
        rss = f"{mem['peak_rss_gb']:.2f}" if mem else "—"
        print(f"| {impl} | {dtype} | 4×{size}×{size} ({size * 8} px) | {statistics.median(ts):.2f} | {min(ts):.2f} | "
              f"{speed} | {rss} | {err:.1e} |")


if __name__ == "__main__":
    main()
