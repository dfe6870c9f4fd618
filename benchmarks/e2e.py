"""End-to-end text-to-image on CPU, stage by stage: ours (headless and in ComfyUI) vs the reference math.

Released-size random weights (343M XUT + SDXL-layout VAE in fp16, Qwen3-0.6B in bf16, the
released file layout) are written once to ``--weights`` (about 2.1 GB). Each implementation
runs in its own process (so peak RSS is its own) on the same files, prompt, seed and settings:

* ``headless`` — ``hdm_core.pipeline`` (what ``python -m hdm_core generate`` runs);
* ``comfyui``  — the pack's nodes inside ComfyUI (HDM Checkpoint Loader → HDM Text Encode ×2 →
  KSampler (euler, HDM's uniform schedule via ``HDM Sampler``) → VAE Decode), called in process;
* ``reference`` — the reference implementation's math run the same way: its XUDiT (from a local
  checkout, ``--reference``), transformers' Qwen3Model, diffusers' AutoencoderKL, and the
  reference Euler loop with separate conditional/unconditional calls, the neutral camera map the
  reference pipeline always passes, fp32. TREAD is off everywhere (same math in all three).

Timings: text encode (both prompts), sampling (all steps), VAE decode; model loading is shown
apart and not part of the total. The last column compares each final image with the
reference's (same weights, same noise), which shows the three compute the same thing.

    python benchmarks/e2e.py --reference ~/src/HDM                      # 512 px, 16 steps, CFG 3
    python benchmarks/e2e.py --impls headless --size 1024 --steps 2     # peak memory at 1024 px
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "1girl, izuna (blue archive), fox ears, smile, outdoors, cherry blossoms, masterpiece, newest"
NEGATIVE = "worst quality, low quality, bad anatomy"
CKPT = "hdm-xut-340M-1024px-note.safetensors"
TE = "Qwen3-0.6B"


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def prepare(weights: Path) -> dict[str, Path]:
    """Released-size random weights in the released layout (written once)."""
    paths = {"ckpt": weights / CKPT, "te": weights / TE}
    if (weights / "DONE").is_file():
        return paths
    sys.path.insert(0, str(REPO))
    import torch

    from hdm_core import HDM_XUT_SMALL
    from hdm_core.testing import write_random_hdm
    from hdm_core.text import qwen3_config_dict
    from hdm_core.vae import SDXL_VAE

    print(f"writing released-size random weights to {weights} (one time) …", file=sys.stderr)
    write_random_hdm(weights, 0, xut_config=HDM_XUT_SMALL, qwen3_config=qwen3_config_dict(), vae_config=SDXL_VAE,
                     dtype=torch.float16, ckpt_name=CKPT, te_name=TE)
    (weights / "DONE").write_text("ok")
    return paths


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self.t

        return _Stage()


def save_image(image, path: Path) -> None:
    import numpy as np
    from PIL import Image

    arr = (image.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


# ----------------------------------------------------------------------------- implementations
def run_headless(args, paths) -> tuple[dict, object]:
    sys.path.insert(0, str(REPO))
    import torch

    from hdm_core.pipeline import GenerationParams, HDMPipeline, guidance_kwargs, initial_noise, sample_latents

    timer = Timer()
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    with timer("load"):
        pipe = HDMPipeline.from_files(paths["ckpt"], paths["te"], device="cpu", dtype=dtype)
    params = GenerationParams(prompt=PROMPT, negative=NEGATIVE, width=args.size, height=args.size, steps=args.steps,
                              cfg=args.cfg, seed=args.seed, sampler="euler", camera_map=True,
                              tread_gamma=0.0, tread_gamma_uncond=0.0)
    with torch.inference_mode():
        with timer("text encode"):
            ctx, neg = pipe.encode_contexts(params)
        pipe.release_text_encoder()  # as `python -m hdm_core generate` does before sampling
        with timer("sampling"):
            noise = initial_noise(1, args.size, args.size, args.seed)
            cond, uncond = guidance_kwargs(ctx, neg, params, pipe.device)
            latents = sample_latents(pipe.xut, noise, cond, uncond, params)
        with timer("VAE decode"):
            image = pipe.decode(latents)[0]
    return {"stages": timer.stages, "dtype": str(pipe.dtype).replace("torch.", "")}, image


def run_comfyui(args, paths) -> tuple[dict, object]:
    import asyncio

    comfy_path = Path(args.comfyui or os.environ.get("COMFYUI_PATH") or Path.home() / "ComfyUI").expanduser()
    sys.path.insert(0, str(comfy_path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import folder_paths

    folder_paths.add_model_folder_path("checkpoints", str(paths["ckpt"].parent), is_default=True)
    folder_paths.add_model_folder_path("text_encoders", str(paths["te"]), is_default=True)
    if (comfy_path / "utils" / "__init__.py").is_file():
        import utils  # noqa: F401  (ComfyUI's own package, imported first as main.py does)
    import server

    class _Stub:
        client_id = None
        last_node_id = None

        def send_sync(self, *a, **k):
            pass

    server.PromptServer.instance = _Stub()
    import nodes
    import torch

    asyncio.run(nodes.load_custom_node(str(REPO)))
    hdm = sys.modules[str(REPO).replace(".", "_x_") + ".nodes"]
    timer = Timer()
    with torch.inference_mode():
        with timer("load"):
            model, _, vae = hdm.HDMCheckpointLoader.execute(CKPT, "model.safetensors").result
            (clip,) = hdm.HDMTextEncoderLoader.execute("model.safetensors").result
        with timer("text encode"):
            (pos,) = hdm.HDMTextEncode.execute(clip, PROMPT).result
            (neg,) = hdm.HDMTextEncode.execute(clip, NEGATIVE).result
        latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
        with timer("sampling"):
            (out,) = hdm.HDMSampler.execute(model, pos, neg, latent, args.seed, args.steps, args.cfg, "euler", "hdm_uniform").result
        with timer("VAE decode"):
            (images,) = nodes.VAEDecode().decode(vae, out)
    return {"stages": timer.stages, "dtype": str(model.model.get_dtype()).replace("torch.", "")}, images[0].permute(2, 0, 1)


def run_reference(args, paths) -> tuple[dict, object]:
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(args.reference).expanduser() / "src"))
    import xut.env as env

    env.TORCH_COMPILE = env.USE_LIGER = env.USE_XFORMERS = env.USE_XFORMERS_LAYERS = env.USE_VANILLA = False
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen3Model
    from xut.xut import XUDiT

    from hdm_core import HDM_XUT_SMALL
    from hdm_core.flow import seeded_noise
    from hdm_core.latents import LATENTS_MEAN, LATENTS_STD
    from hdm_core.positions import camera_pos_map
    from hdm_core.text import TOKENIZER_DIR, make_qwen3_config

    timer = Timer()
    with timer("load"):
        sd = load_file(str(paths["ckpt"]))
        with torch.device("meta"):
            dit = XUDiT(**HDM_XUT_SMALL.to_dict())
        dit.load_state_dict({k[len("unet.model."):]: v.float() for k, v in sd.items() if k.startswith("unet.model.")}, assign=True)
        dit.eval()
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4)
        vae.load_state_dict({k[len("vae."):]: v.float() for k, v in sd.items() if k.startswith("vae.")})
        vae.eval()
        del sd
        tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
        te = Qwen3Model(make_qwen3_config()).eval()
        te.load_state_dict({k[len("model."):]: v.float() for k, v in load_file(str(paths["te"] / "model.safetensors")).items()},
                           strict=False)
    with torch.inference_mode():
        with timer("text encode"):
            def enc(text):
                t = tok([text], padding="longest", return_tensors="pt", add_special_tokens=False)
                return te(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
            ctx, neg = enc(PROMPT), enc(NEGATIVE)
        with timer("sampling"):
            x = seeded_noise((1, 4, args.size // 8, args.size // 8), args.seed)
            addon = torch.zeros(1, 1)
            pos = camera_pos_map(args.size // 8, args.size // 8)[None]  # the pipeline always passes the camera map
            t, dt = 1.0, 1.0 / args.steps
            for _ in range(args.steps):  # the reference Euler loop: x -= dt·v, t -= dt
                tt = torch.tensor([t])
                v_c = dit(x, tt, ctx, pos_map=pos, addon_info=addon)
                v_u = dit(x, tt, neg, pos_map=pos, addon_info=addon)
                x = x - dt * (v_u + args.cfg * (v_c - v_u))
                t -= dt
        with timer("VAE decode"):
            mean = torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1)
            std = torch.tensor(LATENTS_STD).view(1, 4, 1, 1)
            image = (vae.decode(x * std + mean).sample / 2 + 0.5).clamp(0, 1)[0]
    return {"stages": timer.stages, "dtype": "float32"}, image


IMPLS = {"reference": run_reference, "headless": run_headless, "comfyui": run_comfyui}


def worker(args) -> None:
    paths = {"ckpt": args.weights / CKPT, "te": args.weights / TE}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result, image = IMPLS[args.worker](args, paths)
    result["peak_rss_gb"] = rss_gb()
    result["threads"] = torch.get_num_threads()
    save_image(image.float().cpu(), args.out_dir / f"{args.worker}-{args.size}.png")
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", nargs="+", default=["reference", "headless", "comfyui"], choices=list(IMPLS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="ours (reference is fp32)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path, default=Path(os.environ.get("HDM_BENCH_WEIGHTS", "/tmp/hdm-bench-weights")))
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/hdm-bench-out"))
    p.add_argument("--reference", type=Path, default=None, help="local checkout of KohakuBlueleaf/HDM")
    p.add_argument("--comfyui", type=Path, default=None, help="ComfyUI checkout (default: COMFYUI_PATH or ~/ComfyUI)")
    p.add_argument("--worker", choices=list(IMPLS), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args)
        return
    if "reference" in args.impls and args.reference is None:
        p.error("--reference PATH (a local KohakuBlueleaf/HDM checkout) is needed for the reference row; "
                "or pass --impls headless comfyui")
    prepare(args.weights)
    results = {}
    for impl in args.impls:
        cmd = [sys.executable, __file__, "--worker", impl, *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{impl} failed")
        results[impl] = json.loads(res.stdout.strip().splitlines()[-1])

    import numpy as np
    from PIL import Image

    def pixels(impl):
        return np.asarray(Image.open(args.out_dir / f"{impl}-{args.size}.png"), dtype=np.float32)

    base = "reference" if "reference" in results else None
    print(f"End to end, {args.size}×{args.size}, {args.steps} Euler steps, CFG {args.cfg}, CPU, "
          f"{results[args.impls[0]]['threads']} threads, released-size random weights; "
          f"1-min load avg at end {os.getloadavg()[0]:.1f}")
    print()
    print("| impl | dtype | load (s) | text encode (s) | sampling (s) | s/step | VAE decode (s) | total (s) "
          "| speed-up vs reference | peak RSS (GB) | mean abs pixel diff vs reference (0-255) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ref_total = None
    if base:
        s = results[base]["stages"]
        ref_total = s["text encode"] + s["sampling"] + s["VAE decode"]
    for impl, r in results.items():
        s = r["stages"]
        total = s["text encode"] + s["sampling"] + s["VAE decode"]
        speed = f"{ref_total / total:.2f}×" if ref_total and impl != base else "—"
        diff = f"{np.abs(pixels(impl) - pixels(base)).mean():.2f}" if base and impl != base else "—"
        print(f"| {impl} | {r['dtype']} | {s['load']:.1f} | {s['text encode']:.2f} | {s['sampling']:.1f} | "
              f"{s['sampling'] / args.steps:.2f} | {s['VAE decode']:.2f} | {total:.1f} | {speed} | "
              f"{r['peak_rss_gb']:.2f} | {diff} |")


if __name__ == "__main__":
    main()
