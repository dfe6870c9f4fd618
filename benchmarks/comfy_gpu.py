"""HDM inside real ComfyUI v0.33 on a CUDA GPU, against headless ``hdm_core``, in one command (issue #12).

    python benchmarks/comfy_gpu.py --out results/            # CUDA: released-size random files, 1024²
    python benchmarks/comfy_gpu.py --smoke --out /tmp/smoke  # CPU: tiny files, 64², every case that a CPU can run

The driver writes random HDM files of the released sizes (``hdm_core.testing.write_random_hdm``; tiny
ones with ``--smoke``) and a small captioned image folder, then spawns one child process
(``benchmarks/comfy_gpu_child.py``) per ComfyUI start-up state, because ComfyUI reads its VRAM
state, dynamic VRAM and pinned-memory switches once, at import. Each child runs API prompts through
ComfyUI's executor with this pack loaded by ComfyUI's own ``load_custom_node`` and writes JSON; one
more child runs the headless side. The driver compares the saved 8-bit images and prints tables:

a. the stock-KSampler and the HDM Sampler (camera + TREAD) workflows in every VRAM state v0.33 offers
   (default = dynamic VRAM on NVIDIA, ``--disable-dynamic-vram``, ``--lowvram`` with and without dynamic
   VRAM, ``--novram``, ``--highvram``): image vs headless (mean / max 8-bit difference), peak memory;
b. weight storage dtypes through HDM Checkpoint Loader's ``weight_dtype`` (when the loader has it);
c. the stock TorchCompileModel node on the HDM MODEL: graph breaks, recompiles, image vs eager, step time;
d. HDM Train LyCORIS from a folder: s/step vs the headless trainer, peak memory, the node's MODEL vs
   the saved file through Load LoRA;
e. one CFG step: ComfyUI eager / TorchCompileModel vs headless eager / ``--compile`` vs the reference
   implementation (``--reference``, a checkout of KohakuBlueleaf/HDM, as ``benchmarks/gpu.py``).

Everything lands in ``--out``: ``tables.md``, ``results.json`` and ``logs.txt`` (every child's output).
A case that fails is an ``error`` row; the others still run. ``--time-limit`` bounds the whole run:
children that would start after it are reported as not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("comfy_gpu_child.py")

PROMPT = "1girl, solo, fox ears, smile, looking at viewer, school uniform, cherry blossoms, outdoors, masterpiece, newest"
NEGATIVE = ""
CAPTION = "1girl, solo, fox ears, smile, outdoors"
CKPT_NAME = "hdm-bench.safetensors"
TE_NAME = "qwen3-bench.safetensors"
DATASET = "hdm_bench_dataset"

#: (name, ComfyUI flags) of every GPU start-up state; the first one also runs cases b–d.
GPU_STATES = [
    ("default", []),
    ("novram", ["--novram"]),
    ("lowvram", ["--lowvram"]),
    ("no-dynamic-vram", ["--disable-dynamic-vram"]),
    ("lowvram-no-dynamic", ["--lowvram", "--disable-dynamic-vram"]),
    ("highvram", ["--highvram"]),
]
WEIGHT_DTYPES = ["default", "fp32", "fp16", "bf16", "fp8_e4m3fn"]


# ----------------------------------------------------------------------------- set-up
def find_comfyui(given: str | None) -> Path | None:
    for c in [given, os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI")]:
        if c and (Path(c).expanduser() / "comfy" / "model_management.py").is_file():
            return Path(c).expanduser().resolve()
    return None


def import_hdm_core():
    sys.path.insert(0, str(REPO))
    try:
        import hdm_core  # noqa: F401
        import hdm_core.testing  # noqa: F401
    finally:
        sys.path.remove(str(REPO))
    return sys.modules["hdm_core"]


def write_files(work: Path, smoke: bool) -> dict:
    """Random HDM files (released layout) in ``work/models`` and a captioned image folder in ``work/input``."""
    import numpy as np
    import torch
    from PIL import Image

    hdm_core = import_hdm_core()
    from hdm_core.testing import TINY_QWEN3, TINY_XUT, write_random_hdm

    from hdm_core.vae import SDXL_VAE

    if smoke:  # ComfyUI builds the VAE's encoder with SDXL's fixed widths: the VAE keeps the released shapes
        configs = dict(xut_config=TINY_XUT, qwen3_config=TINY_QWEN3, vae_config=SDXL_VAE)
    else:
        from hdm_core.text import qwen3_config_dict

        configs = dict(xut_config=hdm_core.HDM_XUT_SMALL, qwen3_config=qwen3_config_dict(), vae_config=SDXL_VAE)
    ckpts, tes = work / "models" / "checkpoints", work / "models" / "text_encoders"
    tes.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = write_random_hdm(ckpts, 0, **configs, dtype=torch.float16, ckpt_name=CKPT_NAME, te_name="te-folder")
    te = tes / TE_NAME
    shutil.move(str(paths["te"] / "model.safetensors"), te)
    shutil.rmtree(paths["te"])
    folder = work / "input" / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    side = 64 if smoke else 1024
    rng = np.random.default_rng(0)
    for i in range(8):  # smooth random images (a VAE sees structure, not white noise), one caption each
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(CAPTION + ("" if i % 2 else ", cherry blossoms"))
    return {"ckpt": str(paths["ckpt"]), "te": str(te), "write_s": time.perf_counter() - t0}


def params(args, files: dict) -> dict:
    smoke = args.smoke
    return {
        "ckpt": files["ckpt"], "te": files["te"], "ckpt_name": CKPT_NAME, "te_name": TE_NAME,
        "prompt": PROMPT, "negative": NEGATIVE, "seed": 1, "cfg": 3.0,
        "size": 64 if smoke else args.size, "steps": 3 if smoke else args.steps,
        "headless_dtype": "fp32" if smoke else "fp16", "weight_dtypes": WEIGHT_DTYPES, "warm_runs": args.warm_runs,
        "reference": str(args.reference) if args.reference else None,
        "train": {"folder": DATASET, "resolution": 64 if smoke else 1024, "steps": 2 if smoke else 20,
                  "batch": 2 if smoke else 4, "tread": 0.5, "precision": "fp32" if smoke else "bf16", "caption": CAPTION},
    }  # fmt: skip


def plan(args) -> list[dict]:
    """The children in priority order (the time limit cuts from the end)."""
    if args.smoke:
        cases = ["workflows", "dtypes", "train"] + (["compile"] if args.smoke_compile else [])
        children = [{"name": "cpu", "kind": "comfy", "flags": ["--cpu"], "cases": cases}]
        children.append({"name": "headless", "kind": "headless", "flags": [], "cases": ["images", "speed", "train"], "compile": args.smoke_compile})
        return children
    children = []
    for i, (name, flags) in enumerate(GPU_STATES):
        cases = ["workflows", "dtypes", "compile", "train"] if i == 0 else ["workflows"]
        children.append({"name": name, "kind": "comfy", "flags": flags, "cases": [c for c in cases if c in args.cases or c == "workflows"]})
        if i == 0:
            children.append({"name": "headless", "kind": "headless", "flags": [], "cases": ["images", "speed", "train"], "compile": True})
    return children


def run_child(child: dict, args, p: dict, work: Path, comfyui: Path, log, timeout: float) -> dict:
    spec = {**child, "device": "cpu" if args.smoke else "cuda", "comfyui": str(comfyui), "workdir": str(work), "params": p,
            "result": str(work / f"result-{child['name']}.json")}  # fmt: skip
    spec_path = work / f"spec-{child['name']}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log.write(f"\n===== child {child['name']}: {' '.join(child['flags']) or '(no flags)'} =====\n")
    log.flush()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(CHILD), "--spec", str(spec_path)], stdout=log, stderr=subprocess.STDOUT,
                              env=env, timeout=timeout, cwd=str(work))  # fmt: skip
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    result_path = Path(spec["result"])
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"name": child["name"], "cases": {}}
    result.update(rc=rc, wall_s=wall)
    if rc != 0 and "error" not in result:
        result["error"] = f"child exited with {rc} (see logs.txt)"
    for case in child["cases"]:
        result["cases"].setdefault(case, {"error": f"did not finish (child exit {rc}; see logs.txt)"})
    return result


# ----------------------------------------------------------------------------- comparing
def image_diff(a: str | None, b: str | None) -> dict | None:
    """Mean and max absolute difference of two 8-bit PNGs, in levels (None when either is missing)."""
    if not a or not b or not Path(a).is_file() or not Path(b).is_file():
        return None
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"mean": float("inf"), "max": 255, "note": f"shapes {x.shape} vs {y.shape}"}
    d = np.abs(x - y)
    return {"mean": float(d.mean()), "max": int(d.max()), "std_a": float(x.std())}


def fmt(v, spec: str = ".2f", none: str = "—") -> str:
    if v is None:
        return none
    if isinstance(v, str):
        return v
    return format(v, spec)


def diff_cell(d: dict | None) -> str:
    return "—" if d is None else f"{d['mean']:.3f} / {d['max']}"


def ms(v) -> str:
    return "—" if v is None else f"{v * 1e3:.1f}"


# ----------------------------------------------------------------------------- tables
def tables(results: dict, args) -> tuple[str, dict]:
    """Markdown tables of every case and a summary dict (what the smoke test checks)."""
    lines: list[str] = []
    summary: dict = {"rows": [], "errors": []}
    comfy = [r for r in results["children"] if r.get("kind") == "comfy"]
    head = next((r for r in results["children"] if r.get("kind") == "headless"), {"cases": {}})
    hcases = head.get("cases", {})
    h_images = hcases.get("images", {})

    def row(case: str, name: str, status: str, **values) -> None:
        summary["rows"].append({"case": case, "name": name, "status": status, **values})
        if status == "error":
            summary["errors"].append(f"{case} / {name}: {values.get('error')}")

    info0 = comfy[0].get("info", {}) if comfy else {}
    lines.append(f"Device: {results.get('device')} · torch {results.get('torch')} · ComfyUI {results.get('comfyui_version')} · "
                 f"driver {results.get('driver') or '—'} · {'--smoke (CPU, tiny files)' if args.smoke else 'released-size random files'}, "
                 f"{results['params']['size']}², {results['params']['steps']} steps, CFG {results['params']['cfg']}")  # fmt: skip
    if info0.get("vae_dtype"):
        lines.append(f"ComfyUI's default VAE dtype here: {info0['vae_dtype']} (headless decodes in {'float32' if args.smoke else results['params']['headless_dtype']})")
    if info0.get("comfy_kitchen_backends") is not None:
        lines.append(f"comfy_kitchen backends available: {info0['comfy_kitchen_backends']}")
    if results.get("bundle"):
        lines.append(f"Bundle: {results['bundle']}")

    # -- a. VRAM states
    lines += ["", f"### a. Workflows per VRAM state (image vs headless {results['params']['headless_dtype']}: mean / max 8-bit levels)", "",
              "| state | flags | ComfyUI state | dynamic VRAM | pinned | attention | workflow | vs headless | peak alloc (GB) | peak used (GB) | cold run (s) | step (ms) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    states = [("cpu", ["--cpu"])] if args.smoke else GPU_STATES
    by_name = {r["name"]: r for r in comfy}
    for name, flags in states:
        r = by_name.get(name)
        if r is None:
            why = "not run: time limit" if name in results.get("not_run", []) else "not run"
            lines.append(f"| {name} | `{' '.join(flags)}` | {why} |||||||||")
            row("a", name, "skipped", reason=why)
            continue
        info = r.get("info", {})
        wf = r["cases"].get("workflows", {})
        if "error" in wf or "error" in r and not wf:
            err = wf.get("error") or r.get("error")
            lines.append(f"| {name} | `{' '.join(flags)}` | error: {err} |||||||||")
            row("a", name, "error", error=err)
            continue
        for w in ("ksampler", "hdm_sampler"):
            x = wf.get(w, {})
            d = image_diff(x.get("image"), h_images.get(w, {}).get("image"))
            lines.append(f"| {name} | `{' '.join(flags)}` | {info.get('vram_state')} | {info.get('dynamic_vram')} | {info.get('pinned_memory')} "
                         f"| {info.get('attention')} | {w} | {diff_cell(d)} | {fmt(x.get('peak_alloc_gb'))} | {fmt(x.get('peak_used_gb'))} "
                         f"| {fmt(x.get('cold_wall_s'))} | {ms(x.get('step_s'))} |")  # fmt: skip
            row("a", f"{name}/{w}", "ok", diff=d, peak_alloc_gb=x.get("peak_alloc_gb"), peak_used_gb=x.get("peak_used_gb"))
    if args.smoke:
        for name, flags in GPU_STATES:
            lines.append(f"| {name} | `{' '.join(flags)}` | skipped: CUDA-only (VRAM states and dynamic VRAM need a GPU) |||||||||")
            row("a", name, "skipped", reason="CUDA-only")
    sig = h_images.get("ksampler", {}).get("sigmas")
    if sig:
        lines.append(f"\nHeadless side: HDM Sampler rows = `python -m hdm_core generate` (hdm_uniform, TREAD 0/0.5); "
                     f"KSampler rows = the pipeline API on {sig} sigmas, no TREAD (the CLI has no 'simple' scheduler).")  # fmt: skip

    first = comfy[0] if comfy else {"cases": {}}
    # -- b. weight dtypes
    lines += ["", "### b. Weight storage dtype (HDM Checkpoint Loader `weight_dtype`, KSampler workflow)", "",
              "| weight_dtype | vs ComfyUI fp32 (mean / max) | vs headless | step (ms) | peak alloc (GB) |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    dts = first["cases"].get("dtypes")
    if dts is None:
        lines.append("| (not run) |||||")
        row("b", "dtypes", "skipped", reason="not run")
    elif "skipped" in dts or ("error" in dts and len(dts) <= 2):
        why = dts.get("skipped") or dts.get("error")
        lines.append(f"| {why} |||||")
        row("b", "dtypes", "error" if "error" in dts else "skipped", reason=why, error=dts.get("error"))
    else:
        ref = dts.get("fp32", {}).get("image")
        for dt in WEIGHT_DTYPES:
            x = dts.get(dt, {})
            if "error" in x or "skipped" in x:
                lines.append(f"| {dt} | {x.get('error') or x.get('skipped')} ||||")
                row("b", dt, "error" if "error" in x else "skipped", error=x.get("error"), reason=x.get("skipped"))
                continue
            d_ref = image_diff(x.get("image"), ref)
            d_head = image_diff(x.get("image"), h_images.get("ksampler", {}).get("image"))
            lines.append(f"| {dt} | {diff_cell(d_ref)} | {diff_cell(d_head)} | {ms(x.get('step_s'))} | {fmt(x.get('peak_alloc_gb'))} |")
            row("b", dt, "ok", diff_fp32=d_ref, diff_headless=d_head)

    # -- c. TorchCompileModel
    lines += ["", "### c. Stock TorchCompileModel (inductor) on the HDM MODEL, KSampler workflow", "",
              "| compiles | graph breaks | recompiles | unique graphs | image vs eager (mean / max) | first run (s) | eager step (ms) | compiled step (ms) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    comp = first["cases"].get("compile")
    if comp is None:
        why = "skipped in --smoke: inductor's CPU C++ build takes minutes on a small CPU (--smoke-compile runs it)" if args.smoke else "not run"
        lines.append(f"| {why} ||||||||")
        row("c", "compile", "skipped", reason=why)
    elif "error" in comp:
        lines.append(f"| error: {comp['error']} ||||||||")
        row("c", "compile", "error", error=comp["error"])
    else:
        d = image_diff(comp.get("compiled_image"), comp.get("eager_image"))
        lines.append(f"| yes | {comp.get('graph_breaks')} | {comp.get('recompiles')} | {comp.get('unique_graphs')} | {diff_cell(d)} "
                     f"| {fmt(comp.get('compile_first_run_s'))} | {ms(comp.get('eager_step_s'))} | {ms(comp.get('step_s'))} |")  # fmt: skip
        if comp.get("graph_break_reasons"):
            lines.append(f"\nGraph breaks: {comp['graph_break_reasons']}")
        row("c", "compile", "ok", diff=d)

    # -- d. training
    t = results["params"]["train"]
    lines += ["", f"### d. HDM Train LyCORIS: lora rank 16 attn-mlp, {t['steps']} steps at {t['resolution']} px, {t['precision']}, "
              f"TREAD {t['tread']}, batch {t['batch']}, from a folder", "",
              "| node s/step | headless s/step | node / headless | peak alloc (GB) | peak used (GB) | node MODEL vs saved file via Load LoRA (mean / max) |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    tr = first["cases"].get("train", {"error": "not run"})
    htr = hcases.get("train", {})
    if "error" in tr:
        lines.append(f"| error: {tr['error']} ||||||")
        row("d", "train", "error", error=tr["error"])
    else:
        d = image_diff(tr.get("trained_image"), tr.get("lora_image"))
        hs = htr.get("s_per_step")
        ratio = tr["s_per_step"] / hs if tr.get("s_per_step") and hs else None
        lines.append(f"| {fmt(tr.get('s_per_step'), '.3f')} | {fmt(hs, '.3f', htr.get('error') or htr.get('skipped') or '—')} | "
                     f"{fmt(ratio, '.2f')} | {fmt(tr.get('peak_alloc_gb'))} | {fmt(tr.get('peak_used_gb'))} | {diff_cell(d)} |")  # fmt: skip
        row("d", "train", "ok", diff=d, ratio=ratio)
        if "error" in htr:
            row("d", "headless train", "error", error=htr["error"])

    # -- e. speed
    lines += ["", f"### e. One CFG step at {results['params']['size']}² (median per-step time with a device sync, {results['params']['headless_dtype'] if not args.smoke else 'fp32'})", "",
              "| implementation | step (ms) | it/s | vs headless eager |", "| --- | --- | --- | --- |"]  # fmt: skip
    sp = hcases.get("speed", {})
    if "error" in sp:
        row("e", "headless speed", "error", error=sp["error"])
    base = sp.get("eager")
    wfs = first["cases"].get("workflows", {}).get("ksampler", {})
    speed_rows = [
        ("ComfyUI, KSampler, eager", wfs.get("step_s")),
        ("ComfyUI, KSampler, TorchCompileModel", (comp or {}).get("step_s") if comp and "error" not in comp else None),
        ("headless pipeline, eager", base),
        ("headless pipeline, `--compile` (compile_blocks)", sp.get("compiled")),
        ("reference implementation, eager, 2 calls", sp.get("reference") if results["params"].get("reference") else "not given"),
    ]
    for label, v in speed_rows:
        if isinstance(v, str) or v is None:
            lines.append(f"| {label} | {v or '—'} | — | — |")
            continue
        lines.append(f"| {label} | {v * 1e3:.1f} | {1 / v:.2f} | {fmt(base / v if base else None, '.2f')}× |")
    row("e", "speed", "ok" if base else "error", error=None if base else sp.get("error", "no headless step time"))

    for r in results["children"]:
        if r.get("error"):
            summary["errors"].append(f"child {r['name']}: {r['error']}")
    if results.get("not_run"):
        lines.append(f"\nNot run (time limit {args.time_limit:.0f} s): {', '.join(results['not_run'])}")
    return "\n".join(lines) + "\n", summary


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random files, 64², 3 steps: every case a CPU can run")
    ap.add_argument("--smoke-compile", action="store_true", help="with --smoke: also run TorchCompileModel (inductor's CPU build: minutes)")
    ap.add_argument("--comfyui", default=None, help="ComfyUI v0.33 checkout (default: $COMFYUI_PATH, then ~/ComfyUI)")
    ap.add_argument("--reference", type=Path, default=None, help="checkout of KohakuBlueleaf/HDM for the speed table")
    ap.add_argument("--out", type=Path, required=True, help="folder for tables.md, results.json, logs.txt")
    ap.add_argument("--workdir", type=Path, default=None, help="where the random files and images go (default: a temp folder, removed)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cases", nargs="+", default=["workflows", "dtypes", "compile", "train"], help="cases of the default state")
    ap.add_argument("--states", nargs="+", default=None, help="GPU states to run (default: all)")
    ap.add_argument("--warm-runs", action="store_true", help="also run every prompt a second time (next seed) and time that run")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run (default 450 on CUDA, none with --smoke)")
    args = ap.parse_args(argv)
    if args.time_limit is None:
        args.time_limit = 1e9 if args.smoke else 450.0
    t_start = time.perf_counter()
    comfyui = find_comfyui(args.comfyui)
    if comfyui is None:
        print("ComfyUI not found: pass --comfyui or set COMFYUI_PATH (a ComfyUI v0.33 checkout)", file=sys.stderr)
        return 2
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/comfy_gpu.py needs a CUDA GPU (use --smoke on a CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hdm-comfy-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": torch.cuda.get_device_name() if not args.smoke else "cpu", "torch": torch.__version__, "children": []}
    if not args.smoke:
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            results["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            results["driver"] = None
    version = comfyui / "comfyui_version.py"
    results["comfyui_version"] = version.read_text().split("=")[-1].strip().strip("\"'") if version.is_file() else "?"
    bundle = os.environ.get("HDM_GPU_BUNDLE_MANIFEST")
    if bundle and Path(bundle).is_file():
        results["bundle"] = json.loads(Path(bundle).read_text()).get("summary")
    try:
        files = write_files(work, args.smoke)
        p = params(args, files)
        results["params"] = p
        print(f"files written in {files['write_s']:.1f} s; {results['device']}, torch {torch.__version__}, ComfyUI {results['comfyui_version']}", flush=True)
        children = plan(args)
        if args.states and not args.smoke:
            children = [c for c in children if c["name"] in args.states or c["kind"] == "headless"]
        results["not_run"] = []
        with open(args.out / "logs.txt", "w") as log:
            for child in children:
                left = args.time_limit - (time.perf_counter() - t_start)
                if left < 20:
                    results["not_run"].append(child["name"])
                    continue
                if child["kind"] == "headless":
                    sig = next((r["cases"].get("workflows", {}).get("sigmas_simple") for r in results["children"] if r.get("kind") == "comfy"), None)
                    p["sigmas_simple"] = sig
                r = run_child(child, args, p, work, comfyui, log, timeout=left)
                r["kind"] = child["kind"]
                results["children"].append(r)
                print(f"child {child['name']}: exit {r['rc']} in {r['wall_s']:.1f} s", flush=True)
        results["info"] = {r["name"]: r.get("info") for r in results["children"]}
        md, summary = tables(results, args)
        results["summary"] = summary
        results["total_s"] = time.perf_counter() - t_start
        md += f"\nTotal wall time: {results['total_s']:.0f} s\n"
        (args.out / "tables.md").write_text(md)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(md)
        if summary["errors"]:
            print("ERRORS:\n  " + "\n  ".join(summary["errors"]))
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
