"""LoKr training-step speed and memory: the released 343M config, random weights, 512 px.

Measures what the trainer does per optimiser step (``hdm_core.train.Trainer.run``: forward
with HDM's rectified-flow loss, backward into the adapter, clip, AdamW) on batch 1 with a
256-token text context (HDM's training encoding: every position, no mask), for each
combination of precision (fp32 weights, or bf16 weights + bf16 autocast), TREAD rate (0 and
0.5) and per-block gradient checkpointing (off/on). Each combination runs in a fresh process,
so its peak RSS (``ru_maxrss``) belongs to it alone. Nothing is asserted: the table is the
measurement (issue 7's targets are ≤ 12 GB with checkpointing and a TREAD 0.5 speed-up of
≥ 1.5× at 512 px). The text encoder and VAE are not loaded (they only encode the data; with
the caches on they are idle or released during training).

Adapter: HDM's own LyCORIS fine-tune (``algo=lokr, factor=4, full_matrix, train_norm,
preset=full``: all 103 Linears, the patch conv, the shared-adaLN norms) unless
``--adapter example`` (trainer/example.toml's ``lokr dim 16 factor 8 attn-mlp``).
``--bypass`` trains in LyCORIS' bypass mode (``y = W x + ΔW-path(x)``) instead of rebuilding
``W + ΔW`` for every layer on every forward.

    python benchmarks/train_step.py                          # 2 timed steps after 1 warm-up, all 8 rows
    python benchmarks/train_step.py --dtypes fp32 --steps 3  # fewer rows, more steps
    python benchmarks/train_step.py --profile --dtypes fp32 --treads 0.5 --ckpt off   # + top ops of one step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = {
    "hdm": dict(algo="lokr", factor=4, full_matrix=True, train_norm=True, preset="full"),
    "example": dict(algo="lokr", dim=16, factor=8, preset="attn-mlp"),
}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except OSError:  # not Linux
        return float("nan")


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))  # hdm_core only; never the ComfyUI nodes
    import torch

    from hdm_core import HDM_XUT_SMALL, XUT
    from hdm_core.train import AdapterConfig, LatentData, TrainCallbacks, TrainConfig, Trainer

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    model = XUT(HDM_XUT_SMALL, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    rss_model = _current_rss_gb()

    gen = torch.Generator().manual_seed(0)
    n = 4
    latents = [torch.randn(4, args.size, args.size, generator=gen) for _ in range(n)]
    contexts = [torch.randn(args.ctx, HDM_XUT_SMALL.ctx_dim, generator=gen) for _ in range(n)]
    data = LatentData(latents, contexts)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            steps=args.warmup + args.steps, batch_size=1, tread_rate=args.tread, gradient_checkpointing=args.ckpt == "on",
            mixed_precision="no" if args.dtype == "fp32" else "bf16", output_dir=out, save_state=False,
        )  # fmt: skip
        trainer = Trainer(
            model, data, AdapterConfig(**ADAPTERS[args.adapter], bypass_mode=args.bypass), cfg, device="cpu",
            callbacks=TrainCallbacks(progress=lambda info: stamps.append(time.perf_counter())),
        )  # fmt: skip
        trainable = sum(p.numel() for _, p in trainer.adapter.trainable_parameters())
        rss_setup = _current_rss_gb()
        profile_table = ""
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with trainer.session(), profile(activities=[ProfilerActivity.CPU]) as prof:
                loss = trainer.micro_batch_loss(0)
                loss.backward()
            trainer.optimizer.zero_grad(set_to_none=True)
            profile_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        start = time.perf_counter()
        result = trainer.run()
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)][args.warmup :]
    print(json.dumps({
        "times": times,
        "status": result.status,
        "loss": result.loss_history,
        "build_s": build_s,
        "rss_model_gb": rss_model,
        "rss_setup_gb": rss_setup,
        "peak_rss_gb": _rss_gb(),
        "trainable": trainable,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "profile": profile_table,
    }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per row (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--size", type=int, default=64, help="latent side (pixels / 8; default 64 = 512 px)")
    p.add_argument("--ctx", type=int, default=256, help="text tokens (default 256, HDM's training length)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--treads", nargs="+", type=float, default=[0.0, 0.5], help="TREAD rates (default 0 0.5)")
    p.add_argument("--ckpt", nargs="+", default=["off", "on"], choices=["off", "on"], help="gradient checkpointing")
    p.add_argument("--adapter", default="hdm", choices=sorted(ADAPTERS))
    p.add_argument("--bypass", action="store_true", help="LyCORIS bypass mode (no per-forward weight rebuild)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--profile", action="store_true", help="also print the top ops (self CPU time) of one step per row")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--tread", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.ckpt = args.ckpt[0]
        worker(args)
        return

    rows = []
    for dtype in args.dtypes:
        for ckpt in args.ckpt:
            for tread in args.treads:
                load_before = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--worker", "--dtype", dtype, "--tread", str(tread), "--ckpt", ckpt,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--size", str(args.size),
                       "--ctx", str(args.ctx), "--adapter", args.adapter, "--threads", str(args.threads)]  # fmt: skip
                cmd += ["--profile"] if args.profile else []
                cmd += ["--bypass"] if args.bypass else []
                res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if res.returncode:
                    print(res.stderr, file=sys.stderr)
                    raise SystemExit(f"worker failed for {dtype} tread {tread} checkpointing {ckpt}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["load"] = (load_before, os.getloadavg()[0])
                rows.append((dtype, ckpt, tread, r))
                print(f"  done: {dtype} ckpt={ckpt} tread={tread}: {statistics.median(r['times']):.2f} s/step", file=sys.stderr)
                if args.profile:
                    print(f"\n### top ops, {dtype}, checkpointing {ckpt}, TREAD {tread}\n{r['profile']}")

    first = rows[0][3]
    mode = ", bypass mode" if args.bypass else ""
    print(f"LoKr training step ({args.adapter} adapter{mode}, {first['trainable'] / 1e6:.1f}M trainable), 343M XUT random weights, "
          f"CPU, batch 1, {args.size * 8} px ({(args.size // 2) ** 2} image tokens) + {args.ctx} text tokens, "
          f"{first['threads']} threads, torch {first['torch']}, {os.cpu_count()} CPUs")  # fmt: skip
    print()
    print("| precision | grad ckpt | TREAD | median s/step | min s/step | steps | TREAD speed-up | peak RSS (GB) "
          "| RSS model / +adapter (GB) | load avg (1 min, before → after) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = {(d, c): statistics.median(r["times"]) for d, c, t, r in rows if t == 0.0}
    for dtype, ckpt, tread, r in rows:
        med = statistics.median(r["times"])
        ref = base.get((dtype, ckpt))
        speedup = f"{ref / med:.2f}×" if ref and tread > 0 else "—"
        precision = "fp32" if dtype == "fp32" else "bf16 weights + autocast"
        print(f"| {precision} | {ckpt} | {tread:g} | {med:.2f} | {min(r['times']):.2f} | {len(r['times'])} | {speedup} | "
              f"{r['peak_rss_gb']:.2f} | {r['rss_model_gb']:.2f} / {r['rss_setup_gb']:.2f} | "
              f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
