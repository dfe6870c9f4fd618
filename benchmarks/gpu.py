"""HDM on one GPU: fp16/bf16 accuracy and speed at 1024×1024, ours vs the reference, one process.

Four parts, each printed as a table (and all of it written as JSON with ``--json``):

1. **Accuracy** — the released 343M config with scaled random weights (O(1) activations, as
   ``xut_forward.py``), batch 1, 256 text tokens, latent 128×128: max-abs error relative to
   max |output| of *our* float32 forward (TF32 off), for ours and the reference in fp32,
   fp16 and bf16. Ours runs with half weights and no autocast (its fp32 islands are in the
   model); the reference runs as its ``scripts/inference_fm.py`` does: half weights under
   ``torch.autocast``. fp32 rows show the two implementations agree on the GPU; the half rows
   show what each one's half-precision path loses.
2. **Sampling speed** — one CFG step (conditional + unconditional forward) at 1024×1024 as
   steps per second: the reference (two calls, eager and with its own per-block
   ``torch.compile``), ours (two calls, one batched call, and ``XUT.compile_blocks``), in
   fp16 and bf16. Calls alternate between implementations, timed with a device sync.
3. **End to end** — ``hdm_core.pipeline`` (what ``python -m hdm_core generate`` runs) with
   released-size random weights written to a temp folder: text encode, 16 Euler steps at CFG 3,
   VAE decode at 1024×1024 per stage, peak GPU memory, and the pixel difference of the fp16 and
   bf16 images to the fp32 image.
4. **Training step** — LoKr (HDM's fine-tune settings) at 1024 px, bf16 autocast, TREAD 0 vs
   0.5, batch 1 (when lycoris-lora is importable).

    python benchmarks/gpu.py --reference ~/src/HDM --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # hdm_core only; never the ComfyUI nodes
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from xut_forward import build_ours, build_reference  # noqa: E402

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESULTS: dict = {}
#: Tokens of the negative prompt in the speed test (a short one, e.g. "worst quality, low quality").
NEG_TOKENS = 16
#: TREAD rate of the negative pass when the CFG pair runs as HDM runs it (its official UI's default).
NEG_TREAD = 0.5

DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def sync_time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1024**3 if DEVICE == "cuda" else float("nan")


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()


def ref_autocast(dtype: torch.dtype):
    """How the reference runs in half precision: half weights under autocast (its inference_fm.py)."""
    return torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32)


def inputs(size: int, ctx_len: int, device: str, ctx_dim: int = 1024):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, size, size, generator=gen)
    ctx = torch.randn(1, ctx_len, ctx_dim, generator=gen)
    return x.to(device), torch.tensor([0.7], device=device), ctx.to(device), torch.zeros(1, 1, device=device)


def model_config(args):
    """The XUT config benchmarked: the released 343M one, or a tiny one for ``--smoke``."""
    from hdm_core import HDM_XUT_SMALL

    if args.smoke:
        from hdm_core.testing import TINY_XUT

        return TINY_XUT
    return HDM_XUT_SMALL


# ----------------------------------------------------------------------------- FLOPs and the card's peak
def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
    convolutions, attention: 2 per multiply-add; elementwise work is not counted).

    PyTorch registers its GPU attention kernels; the CPU one is added here with the same formula,
    so ``--smoke`` on a CPU counts what a GPU run counts.
    """
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


def gemm_shapes(config, tokens: int) -> list[tuple[int, int, int]]:
    """``(M, K, N)`` of the XUT's big matrix products for ``tokens`` rows (qkv, MLP in, MLP out, out)."""
    inner = config.heads * config.dim_head
    return [(tokens, config.dim, 3 * inner), (tokens, config.dim, 2 * config.mlp_dim),
            (tokens, config.mlp_dim, config.dim), (tokens, inner, config.dim)]  # fmt: skip


def matmul_peak(dtype: torch.dtype, shapes: list[tuple[int, int, int]], runs: int = 20) -> dict:
    """The best measured ``a @ b`` rate (FLOP/s) over ``shapes``: the card's matrix peak in ``dtype`` at the model's shapes."""
    gen = torch.Generator().manual_seed(0)
    best = {"flops_per_s": 0.0, "shape": None}
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
        b = torch.randn(k, n, generator=gen).to(DEVICE, dtype)
        ts = sync_time(lambda: a @ b, runs, max(2, runs // 4))
        rate = 2 * m * k * n / min(ts)  # a peak: the best of the runs
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "shape": [m, k, n]}
    return best


def accuracy(args) -> None:
    set_tf32(False)
    config = model_config(args)
    x, t, ctx, addon = inputs(args.size, args.ctx, DEVICE, config.ctx_dim)
    ours32 = build_ours("fp32", config=config).to(DEVICE)
    sd = {k: v.cpu() for k, v in ours32.state_dict().items()}
    rows = []
    with torch.inference_mode():
        truth = ours32(x, t, ctx, addon_info=addon).float()
        scale = truth.abs().max()
        for name in ("fp32", "fp16", "bf16"):
            dt = DT[name]
            ours = build_ours(name, config=config).to(DEVICE) if name != "fp32" else ours32
            o = ours(x.to(dt), t, ctx.to(dt), addon_info=addon.to(dt)).float()
            ref = build_reference(args.reference, sd, name).to(DEVICE) if args.reference else None
            r = None
            if ref is not None:
                with ref_autocast(dt):
                    r = ref(x.to(dt), t, ctx.to(dt), addon_info=addon.to(dt)).float()
            rows.append({
                "dtype": name,
                "ours": float((o - truth).abs().max() / scale),
                "reference": None if r is None else float((r - truth).abs().max() / scale),
                "finite": bool(torch.isfinite(o).all()),
            })  # fmt: skip
            del ours, ref
    set_tf32(True)
    RESULTS["accuracy"] = rows
    print(f"\n### Accuracy: XUT forward, latent {args.size}² ({args.size * 8} px), {args.ctx} tokens, vs our fp32 (TF32 off)\n")
    print("| dtype | ours max-abs err / max-abs out | reference |")
    print("| --- | --- | --- |")
    for r in rows:
        ref = "—" if r["reference"] is None else f"{r['reference']:.2e}"
        print(f"| {r['dtype']} | {r['ours']:.2e} | {ref} |")


def speed(args) -> None:
    """One CFG step per configuration: time, FLOPs, the matmul peak and MFU, next to the reference."""
    from hdm_core.tread import seeded_keep_mask
    from hdm_core.xut import patch_grid

    config = model_config(args)
    neg_tokens = min(NEG_TOKENS, args.ctx)
    x1, t1, ctx1, addon1 = inputs(args.size, args.ctx, DEVICE, config.ctx_dim)
    neg1 = torch.randn(1, neg_tokens, config.ctx_dim, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    rows, peaks = [], {}
    rows_img = patch_grid(args.size, args.size, config.patch_size)
    num_img = rows_img[0] * rows_img[1]
    for name in args.dtypes:
        dt = DT[name]
        ours = build_ours(name, config=config).to(DEVICE)
        sd = {k: v.float().cpu() for k, v in ours.state_dict().items()}
        ref = build_reference(args.reference, sd, name).to(DEVICE) if args.reference else None
        ours_c = ours_g = None
        if args.compile:
            ours_c = build_ours(name, config=config).to(DEVICE)
            ours_c.compile_blocks()
        if args.cuda_graphs:
            ours_g = build_ours(name, config=config).to(DEVICE)
            if not ours_g.compile_denoiser(mode="reduce-overhead"):
                ours_g = None  # not on CUDA: nothing to measure
        peaks[name] = matmul_peak(dt, gemm_shapes(config, max(args.batches) * (num_img + args.ctx)), runs=max(4, args.runs * 2))
        for b in args.batches:
            xs, t, a = x1.to(dt).expand(b, -1, -1, -1), t1.expand(b), addon1.to(dt).expand(b, -1)
            cs, ns = ctx1.to(dt).expand(b, -1, -1), neg1.to(dt).expand(b, -1, -1)
            # HDM's CFG pair: the negative routed at TREAD 0.5 (the seeded rule of both front-ends)
            neg_mask = seeded_keep_mask(num_img, NEG_TREAD, list(range(b)), device=DEVICE)
            impls = {}
            if ref is not None:
                import xut.env as env

                def ref_step(ref=ref, compiled=False):
                    env.TORCH_COMPILE = compiled
                    with ref_autocast(dt):
                        ref(xs, t, cs, addon_info=a)
                        ref(xs, t, ns, addon_info=a)

                impls["reference, eager, 2 calls"] = ref_step
            impls["ours, eager, 2 calls"] = lambda: (ours(xs, t, cs, addon_info=a), ours(xs, t, ns, addon_info=a))
            impls["ours, eager, HDM CFG pair (negative TREAD 0.5)"] = lambda: (
                ours(xs, t, cs, addon_info=a), ours(xs, t, ns, addon_info=a, tread_mask=neg_mask))
            # batched CFG: the negative is padded to the prompt's length and its padded keys masked
            mask = torch.zeros(2 * b, args.ctx, dtype=torch.bool, device=DEVICE)
            mask[:b] = True
            mask[b:, :neg_tokens] = True
            x2, t2, a2 = torch.cat([xs, xs]), torch.cat([t, t]), torch.cat([a, a])
            c2 = torch.cat([cs, torch.nn.functional.pad(ns, (0, 0, 0, args.ctx - neg_tokens))])
            impls["ours, eager, 1 batched call"] = lambda: ours(x2, t2, c2, addon_info=a2, ctx_mask=mask)
            times: dict[str, list[float]] = {k: [] for k in impls}
            flops: dict[str, int] = {}
            diffs: dict[str, float] = {}
            with torch.inference_mode():
                for k, fn in impls.items():  # warm-up, then one counted call
                    sync_time(fn, 0, args.warmup)
                    flops[k] = count_flops(fn)
                for _ in range(args.runs):  # alternate implementations run by run
                    for k, fn in impls.items():
                        times[k] += sync_time(fn, 1, 0)
                extra = {}
                if ours_c is not None:
                    extra["ours, compile_blocks, HDM CFG pair"] = lambda: (
                        ours_c(xs, t, cs, addon_info=a), ours_c(xs, t, ns, addon_info=a, tread_mask=neg_mask))
                    if ref is not None:
                        extra["reference, its torch.compile, 2 calls"] = lambda: ref_step(compiled=True)
                if ours_g is not None:
                    extra["ours, CUDA graphs (reduce-overhead), HDM CFG pair"] = lambda: (
                        ours_g(xs, t, cs, addon_info=a), ours_g(xs, t, ns, addon_info=a, tread_mask=neg_mask))
                eager = impls["ours, eager, HDM CFG pair (negative TREAD 0.5)"]() if extra else None
                for k, fn in list(extra.items()):
                    try:  # a compile failure must not lose the eager rows
                        t0 = time.perf_counter()
                        sync_time(fn, 0, 3)
                        RESULTS.setdefault("compile_s", {})[f"{k} {name} batch {b}"] = time.perf_counter() - t0
                        if k.startswith("ours"):  # same weights as the eager model: how far compiling moved the output
                            outs = fn()
                            diffs[k] = max(float((o.float() - e.float()).abs().max() / e.float().abs().max()) for o, e in zip(outs, eager))
                            flops[k] = flops["ours, eager, HDM CFG pair (negative TREAD 0.5)"]
                        else:
                            flops[k] = flops["reference, eager, 2 calls"]
                        times[k] = []
                    except Exception as exc:
                        RESULTS.setdefault("errors", {})[f"{k} {name} batch {b}"] = f"{type(exc).__name__}: {exc}"
                        del extra[k]
                for _ in range(args.runs if extra else 0):
                    for k, fn in extra.items():
                        times[k] += sync_time(fn, 1, 0)
                if ref is not None:
                    env.TORCH_COMPILE = False
                if args.profile and DEVICE == "cuda":
                    try:
                        RESULTS.setdefault("speed_profiles", {})[f"{name} batch {b}"] = kernel_table(
                            impls["ours, eager, HDM CFG pair (negative TREAD 0.5)"])
                    except Exception as exc:
                        RESULTS.setdefault("errors", {})[f"profile {name} batch {b}"] = f"{type(exc).__name__}: {exc}"
            base = statistics.median(times["reference, eager, 2 calls"]) if ref is not None else None
            for k, ts in times.items():
                med = statistics.median(ts)
                rate = flops[k] / med
                rows.append({"impl": k, "dtype": name, "batch": b, "median_s": med, "min_s": min(ts), "it_s": 1 / med,
                             "flops": flops[k], "flops_per_s": rate, "mfu": rate / peaks[name]["flops_per_s"],
                             "speedup": None if base is None else base / med, "rel_diff_vs_eager": diffs.get(k)})  # fmt: skip
        del ours, ref, impls, ours_c, ours_g
        reset_peak()
    RESULTS["speed"] = rows
    RESULTS["matmul_peak"] = peaks
    RESULTS["speed_setup"] = {"config": config.to_dict(), "size": args.size, "ctx": args.ctx, "neg_tokens": neg_tokens,
                              "neg_tread": NEG_TREAD, "batches": list(args.batches)}  # fmt: skip
    print(f"\n### Sampling speed: one CFG step at {args.size * 8}×{args.size * 8} ({args.ctx}-token prompt, "
          f"{neg_tokens}-token negative), {RESULTS['device']}, {args.runs} runs each, alternating\n")
    for name, pk in peaks.items():
        print(f"measured matmul peak, {name}: {pk['flops_per_s'] / 1e12:.2f} TFLOP/s (a @ b, best of the model's shapes, at {pk['shape']})")
    print("\nFLOPs: torch.utils.flop_counter.FlopCounterMode on one step (matmuls, convolutions, attention); "
          "MFU = FLOPs / median time / measured matmul peak of the same dtype.\n")
    print("| impl | dtype | batch | median (ms) | min (ms) | it/s | GFLOP/step | TFLOP/s | MFU | vs reference eager, same dtype |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        sp = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        print(f"| {r['impl']} | {r['dtype']} | {r['batch']} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | {r['it_s']:.2f} "
              f"| {r['flops'] / 1e9:.3f} | {r['flops_per_s'] / 1e12:.3f} | {r['mfu']:.1%} | {sp} |")
    for r in rows:
        if r["rel_diff_vs_eager"] is not None:
            print(f"{r['impl']}, {r['dtype']}, batch {r['batch']}: max |compiled − eager| / max |eager| = {r['rel_diff_vs_eager']:.2e}")
    for key, table in RESULTS.get("speed_profiles", {}).items():
        print(f"\nWhere the time goes, ours, HDM CFG pair, {key}:\n{table}")


def kernel_table(fn) -> str:
    """GPU kernel time of one call of ``fn`` by category (GEMM, attention, elementwise/other) and the idle gap."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall = time.perf_counter() - t0
    cats: dict[str, float] = {"GEMM": 0.0, "attention": 0.0, "elementwise / norm / copy / other": 0.0}
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        n = e.key.lower()
        cat = ("attention" if any(w in n for w in ("flash", "fmha", "attention", "attn"))
               else "GEMM" if any(w in n for w in ("gemm", "xmma", "cutlass", "ampere_", "sm80_", "sm90_", "cublas", "nvjet"))
               else "elementwise / norm / copy / other")  # fmt: skip
        cats[cat] += e.self_device_time_total / 1e6
    busy = sum(cats.values())
    lines = ["| kernels | ms | share of wall |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v * 1e3:.2f} | {v / wall:.0%} |" for k, v in cats.items()]
    lines.append(f"| GPU idle (launch gaps, host work) | {(wall - busy) * 1e3:.2f} | {(wall - busy) / wall:.0%} |")
    return "\n".join(lines) + "\n\n" + prof.key_averages().table(sort_by="self_device_time_total", row_limit=15)


def end_to_end(args) -> None:
    from hdm_core import HDM_XUT_SMALL
    from hdm_core.pipeline import GenerationParams, HDMPipeline
    from hdm_core.testing import TINY_QWEN3, TINY_VAE, TINY_XUT, write_random_hdm
    from hdm_core.text import qwen3_config_dict
    from hdm_core.vae import SDXL_VAE

    configs = dict(xut_config=HDM_XUT_SMALL, qwen3_config=qwen3_config_dict(), vae_config=SDXL_VAE)
    if args.tiny:  # a dry run of this script on any machine
        configs = dict(xut_config=TINY_XUT, qwen3_config=TINY_QWEN3, vae_config=TINY_VAE)

    rows, images = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_random_hdm(tmp, 0, **configs, dtype=torch.float16, ckpt_name="hdm.safetensors", te_name="qwen3")
        params = GenerationParams(prompt="1girl, izuna (blue archive), fox ears, smile, cherry blossoms, masterpiece",
                                  negative="worst quality, low quality", width=args.size * 8, height=args.size * 8,
                                  steps=args.steps, cfg=3.0, seed=1)  # fmt: skip
        for name in ["fp32", *args.dtypes]:
            set_tf32(name != "fp32")  # the fp32 image is the accuracy reference
            pipe = HDMPipeline.from_files(paths["ckpt"], paths["te"], device=DEVICE, dtype=DT[name])
            pipe.generate(GenerationParams(**{**params.__dict__, "steps": 2}))  # warm-up (kernels, allocator)
            reset_peak()
            stages = {}
            with torch.inference_mode():
                sync()
                t0 = time.perf_counter()
                pipe.encode_prompt(params.prompt), pipe.encode_prompt(params.negative)
                sync()
                stages["text encode"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                lat = pipe.sample(params)
                sync()
                stages["sampling"] = time.perf_counter() - t0  # includes its own (repeated) text encode
                t0 = time.perf_counter()
                img = pipe.decode(lat)
                sync()
                stages["VAE decode"] = time.perf_counter() - t0
            images[name] = img
            rows.append({"dtype": name, **stages, "it_s": args.steps / stages["sampling"],
                         "peak_gb": peak_gb(), "finite": bool(torch.isfinite(img).all())})  # fmt: skip
            del pipe
            reset_peak()
    for r in rows:
        r["mean_abs_diff_vs_fp32_255"] = float((images[r["dtype"]] - images["fp32"]).abs().mean() * 255)
    RESULTS["end_to_end"] = rows
    print(f"\n### End to end, hdm_core.pipeline, {args.size * 8}², {args.steps} Euler steps, CFG 3, released-size random weights\n")
    print("| dtype | text encode (s) | sampling (s) | it/s | VAE decode (s) | peak GPU memory (GB) | image mean |diff| vs fp32 (/255) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dtype']} | {r['text encode']:.3f} | {r['sampling']:.2f} | {r['it_s']:.1f} | {r['VAE decode']:.3f} "
              f"| {r['peak_gb']:.2f} | {r['mean_abs_diff_vs_fp32_255']:.2f} |")


def training(args) -> None:
    try:
        import lycoris  # noqa: F401
    except ImportError:
        print("\n(training step skipped: lycoris-lora is not installed)")
        return
    import dataclasses

    from hdm_core import HDM_XUT_SMALL, XUT
    from hdm_core.train import AdapterConfig, LatentData, TrainConfig, Trainer
    from hdm_core.train.optim import set_lr

    size = args.size
    if args.tiny:
        from hdm_core.testing import TINY_XUT as config
    else:
        config = HDM_XUT_SMALL
    gen = torch.Generator().manual_seed(0)
    n = max(8, 2 * max(args.train_batches))
    data = LatentData([torch.randn(4, size, size, generator=gen) for _ in range(n)],
                      [torch.randn(args.ctx, config.ctx_dim, generator=gen) for _ in range(n)])  # fmt: skip
    rows, losses, profiles = [], [], {}
    for batch in args.train_batches:
        model = XUT(config, dtype=torch.bfloat16, device=DEVICE).eval()
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(steps=1000, batch_size=batch, mixed_precision="bf16", output_dir=out, save_state=False)
            adapter = AdapterConfig(algo="lokr", factor=4, full_matrix=True, train_norm=True, preset="full")
            trainer = Trainer(model, data, adapter, cfg, device=DEVICE)
            times: dict[float, list[float]] = {0.0: [], 0.5: []}

            def step(rate: float) -> float:
                trainer.config = dataclasses.replace(cfg, tread_rate=rate)
                sync()
                t0 = time.perf_counter()
                set_lr(trainer.optimizer, trainer.step, cfg.steps, cfg.optimizer)
                losses.append(float(trainer.backward_micro_batches()))
                trainer.optimizer_step()
                trainer.step += 1
                trainer.micro_step += 1
                sync()
                return time.perf_counter() - t0

            with trainer.session():
                for rate in (0.5, 0.0, 0.5, 0.0):
                    step(rate)
                reset_peak()
                for i in range(args.runs):
                    for rate in (0.0, 0.5) if i % 2 else (0.5, 0.0):
                        times[rate].append(step(rate))
                peak = peak_gb()
                if args.profile and DEVICE == "cuda":
                    from torch.profiler import ProfilerActivity, profile

                    for rate in (0.0, 0.5):
                        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                            wall = step(rate)
                        events = prof.key_averages()
                        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
                        gpu_busy = sum(e.self_device_time_total for e in kernels) / 1e6  # kernels only, as the table's total
                        profiles[f"batch {batch}, TREAD {rate}"] = (
                            f"wall {wall:.3f} s, GPU kernels busy {gpu_busy:.3f} s\n"
                            + events.table(sort_by="self_device_time_total", row_limit=12)
                        )
            base = statistics.median(times[0.0])
            for rate, ts in times.items():
                med = statistics.median(ts)
                rows.append({"batch": batch, "tread": rate, "median_s": med, "it_s": 1 / med, "speedup": base / med, "peak_gb": peak})
        del model, trainer
        reset_peak()
    RESULTS["training"] = {"rows": rows, "losses_finite": all(v == v and abs(v) < 1e4 for v in losses)}
    print(f"\n### Training step: LoKr (HDM fine-tune settings), {size * 8} px, bf16 autocast, {args.ctx} tokens\n")
    print("| batch | TREAD rate | median s/step | it/s | speed-up vs TREAD 0 | peak GPU memory (GB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['tread']} | {r['median_s']:.3f} | {r['it_s']:.2f} | {r['speedup']:.2f}× | {r['peak_gb']:.2f} |")
    print(f"\nlosses finite: {RESULTS['training']['losses_finite']}")
    for name, table in profiles.items():
        print(f"\nProfile of one step, {name}: {table}")
    RESULTS["training"]["profiles"] = profiles


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=None, help="local checkout of KohakuBlueleaf/HDM")
    p.add_argument("--size", type=int, default=128, help="latent side (pixels / 8; default 128 = 1024 px)")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16", "fp32"])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="end-to-end sampling steps")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (ours per block; the reference's own)")
    p.add_argument("--cuda-graphs", action="store_true", help="also time XUT.compile_denoiser() (torch.compile reduce-overhead: CUDA graphs)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="sampling batch sizes (CFG step)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long CPU run of the speed part on a tiny XUT (tests use it)")
    p.add_argument("--train-batches", type=int, nargs="+", default=[1, 4], help="training batch sizes")
    p.add_argument("--profile", action="store_true", help="profile one training step per TREAD rate (top GPU ops)")
    p.add_argument("--parts", nargs="+", default=["accuracy", "speed", "e2e", "train"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run of the script
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny end-to-end models (dry run)
    args = p.parse_args(argv)
    if args.smoke:  # tiny and fast on a CPU; explicit options still win where given
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        for opt, value in (("--device", "cpu"), ("--size", 8), ("--ctx", 8), ("--runs", 2), ("--warmup", 1),
                           ("--dtypes", ["fp32"]), ("--batches", [1, 2]), ("--parts", ["speed"])):  # fmt: skip
            if opt not in given:
                setattr(args, opt[2:].replace("-", "_"), value)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    RESULTS["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    RESULTS["torch"] = torch.__version__
    print(f"{RESULTS['device']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    parts = {"accuracy": accuracy, "speed": speed, "e2e": end_to_end, "train": training}
    for part in args.parts:
        try:
            parts[part](args)
        except Exception as exc:  # one failing part must not lose the others' numbers
            import traceback

            traceback.print_exc()
            RESULTS.setdefault("errors", {})[part] = f"{type(exc).__name__}: {exc}"
        if args.json:
            args.json.write_text(json.dumps(RESULTS, indent=1))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
