"""LoKr training-step speed and memory: the released 343M config, random weights, 512 px.

Measures what the trainer does per optimiser step (:class:`hdm_core.train.Trainer`: forward
with HDM's rectified-flow loss, backward into the adapter, clip, AdamW) on batch 1 with a
256-token text context (HDM's training encoding: every position, no mask), for each
precision (fp32 weights, or bf16 weights + bf16 autocast) and per-block gradient
checkpointing setting (off/on), at each TREAD rate (default 0 and 0.5).

Each (precision, checkpointing) pair runs in a fresh process, and inside it the TREAD rates
take turns step by step (same model, same adapter), so a shared, busy machine slows them
alike and the speed-up ratio stays meaningful. Wall and CPU seconds (user + system, all
threads) are recorded per step; the CPU time is the steadier number under contention. Peak
RSS (``ru_maxrss``) is read after the warm-up steps, which run from the highest TREAD rate
(least memory) down, so each rate's value is its own peak. Nothing is asserted: the table
is the measurement (issue 7's targets: ≤ 12 GB with checkpointing, TREAD 0.5 ≥ 1.5× faster
than TREAD off, both at 512 px). The text encoder and VAE are not loaded (they only encode
the data; with the caches on they are idle or released during training).

Adapter: HDM's own LyCORIS fine-tune (``algo=lokr, factor=4, full_matrix, train_norm,
preset=full``: all 103 Linears, the patch conv, the shared-adaLN norms) unless
``--adapter example`` (trainer/example.toml's ``lokr dim 16 factor 8 attn-mlp``).
``--bypass`` trains in LyCORIS' bypass mode (``y = W x + ΔW-path(x)``) instead of rebuilding
``W + ΔW`` for every layer on every forward.

    python benchmarks/train_step.py                          # 2 rounds after 1 warm-up round, fp32 + bf16
    python benchmarks/train_step.py --dtypes fp32 --rounds 3 --ckpt on
    python benchmarks/train_step.py --ctx 64                 # shorter text (inference-style captions)
    python benchmarks/train_step.py --profile --dtypes fp32 --ckpt off   # + top ops of one step per TREAD rate
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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))  # hdm_core only; never the ComfyUI nodes
    import dataclasses

    import torch

    from hdm_core import HDM_XUT_SMALL, XUT
    from hdm_core.train import AdapterConfig, LatentData, TrainConfig, Trainer
    from hdm_core.train.optim import set_lr

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
    rates = sorted(args.treads, reverse=True)  # warm-up from the least memory up: per-rate peak RSS
    total = (args.warmup + args.rounds) * len(rates)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            steps=total, batch_size=1, gradient_checkpointing=args.ckpt == "on",
            mixed_precision="no" if args.dtype == "fp32" else "bf16", output_dir=out, save_state=False,
        )  # fmt: skip
        adapter = AdapterConfig(**ADAPTERS[args.adapter], bypass_mode=args.bypass)
        trainer = Trainer(model, data, adapter, cfg, device="cpu")
        trainable = sum(p.numel() for _, p in trainer.adapter.trainable_parameters())
        rss_setup = _current_rss_gb()
        wall: dict[float, list[float]] = {r: [] for r in rates}
        cpu: dict[float, list[float]] = {r: [] for r in rates}
        peak: dict[float, float] = {}
        profiles: dict[float, str] = {}
        losses = []

        def step(rate: float) -> tuple[float, float]:
            trainer.config = dataclasses.replace(cfg, tread_rate=rate)
            w0, c0 = time.perf_counter(), _cpu_seconds()
            set_lr(trainer.optimizer, trainer.step, cfg.steps, cfg.optimizer)
            losses.append(trainer.backward_micro_batches())
            trainer.optimizer_step()
            trainer.step += 1
            trainer.micro_step += 1
            return time.perf_counter() - w0, _cpu_seconds() - c0

        with trainer.session():
            for r in range(args.warmup):
                for rate in rates:
                    step(rate)
                    if r == 0:
                        peak[rate] = _rss_gb()
            for r in range(args.rounds):
                for rate in rates if r % 2 else rates[::-1]:
                    w, c = step(rate)
                    wall[rate].append(w)
                    cpu[rate].append(c)
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                for rate in rates:
                    trainer.config = dataclasses.replace(cfg, tread_rate=rate)
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        trainer.micro_batch_loss(trainer.micro_step).backward()
                    trainer.optimizer.zero_grad(set_to_none=True)
                    profiles[rate] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(json.dumps({
        "wall": {str(k): v for k, v in wall.items()},
        "cpu": {str(k): v for k, v in cpu.items()},
        "peak_rss_gb": {str(k): v for k, v in peak.items()},
        "losses": losses,
        "build_s": build_s,
        "rss_model_gb": rss_model,
        "rss_setup_gb": rss_setup,
        "trainable": trainable,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "profiles": {str(k): v for k, v in profiles.items()},
    }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (one step per TREAD rate each; default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
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
    args = p.parse_args()
    if args.warmup < 1 or args.rounds < 1:
        p.error("--warmup and --rounds must be >= 1")
    if args.worker:
        args.ckpt = args.ckpt[0]
        worker(args)
        return

    runs = []
    for dtype in args.dtypes:
        for ckpt in args.ckpt:
            load_before = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--worker", "--dtype", dtype, "--ckpt", ckpt, "--rounds", str(args.rounds),
                   "--warmup", str(args.warmup), "--size", str(args.size), "--ctx", str(args.ctx), "--adapter", args.adapter,
                   "--threads", str(args.threads), "--treads", *map(str, args.treads)]  # fmt: skip
            cmd += ["--profile"] if args.profile else []
            cmd += ["--bypass"] if args.bypass else []
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                raise SystemExit(f"worker failed for {dtype}, checkpointing {ckpt}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["load"] = (load_before, os.getloadavg()[0])
            runs.append((dtype, ckpt, r))
            print(f"  done: {dtype}, checkpointing {ckpt}", file=sys.stderr)
            for rate, table in r["profiles"].items():
                print(f"\n### top ops of one forward + backward: {dtype}, checkpointing {ckpt}, TREAD {rate}\n{table}")

    first = runs[0][2]
    mode = ", bypass mode" if args.bypass else ""
    print(f"LoKr training step ({args.adapter} adapter{mode}, {first['trainable'] / 1e6:.1f}M trainable), 343M XUT random weights, "
          f"CPU, batch 1, {args.size * 8} px ({(args.size // 2) ** 2} image tokens) + {args.ctx} text tokens, "
          f"{first['threads']} threads, torch {first['torch']}, {os.cpu_count()} CPUs; "
          f"{args.rounds} timed round(s) after {args.warmup} warm-up round(s), TREAD rates interleaved")  # fmt: skip
    print()
    print("| precision | grad ckpt | TREAD | wall s/step (median, min) | CPU s/step (median) | TREAD speed-up (wall / CPU) "
          "| peak RSS (GB) | RSS model / +adapter (GB) | load avg 1 min (before → after) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype, ckpt, r in runs:
        base = str(0.0) if str(0.0) in r["wall"] else None
        for rate in sorted(r["wall"], key=float):
            w, c = r["wall"][rate], r["cpu"][rate]
            speedup = "—"
            if base is not None and rate != base:
                speedup = (f"{statistics.median(r['wall'][base]) / statistics.median(w):.2f}× / "
                           f"{statistics.median(r['cpu'][base]) / statistics.median(c):.2f}×")  # fmt: skip
            precision = "fp32" if dtype == "fp32" else "bf16 weights + autocast"
            print(f"| {precision} | {ckpt} | {float(rate):g} | {statistics.median(w):.1f}, {min(w):.1f} | "
                  f"{statistics.median(c):.1f} | {speedup} | {r['peak_rss_gb'][rate]:.2f} | "
                  f"{r['rss_model_gb']:.2f} / {r['rss_setup_gb']:.2f} | {r['load'][0]:.1f} → {r['load'][1]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
