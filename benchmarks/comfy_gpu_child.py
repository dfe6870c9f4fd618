"""One child process of ``benchmarks/comfy_gpu.py``: one ComfyUI start-up state, or the headless side.

ComfyUI's VRAM state, dynamic VRAM and pinned-memory switches are read from its command line when
``comfy.model_management`` is imported and never change afterwards, so every state needs its own
process. A child reads a JSON spec (``--spec``), runs its cases and writes a JSON result
(``spec["result"]``); a case that fails becomes an ``error`` entry and the others still run.

``comfy`` children start ComfyUI in process the way ``main.py`` does (command-line flags, dynamic
VRAM set-up through ``comfy_aimdo`` where v0.33 enables it), load this pack with ComfyUI's own
``nodes.load_custom_node`` and run API prompts through ``execution.PromptExecutor``, saving images
with the stock SaveImage node. ``headless`` children run ``hdm_core`` alone (the CLI and the
pipeline API), the headless trainer and, when given, the reference implementation.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import importlib.util
import inspect
import json
import statistics
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def load_harness():
    """tests/comfy_harness.py by file path: its StubServer and ComfyUI ``utils`` import serve here too.

    Loaded when ComfyUI is set up, not at import: it imports torch, which this child keeps
    until ComfyUI's start-up order (as main.py's) reaches it.
    """
    spec = importlib.util.spec_from_file_location("hdm_comfy_harness", REPO / "tests" / "comfy_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def import_hdm_core() -> None:
    """``hdm_core`` from this checkout without leaving the repository root on ``sys.path``
    (there, the pack's ``nodes/`` package would shadow ComfyUI's ``nodes`` module)."""
    sys.path.insert(0, str(REPO))
    try:
        importlib.import_module("hdm_core")
    finally:
        sys.path.remove(str(REPO))


# ----------------------------------------------------------------------------- measuring
class Meter:
    """Wall time, ``torch.cuda.max_memory_allocated`` and the device's used memory (polled), per run.

    Dynamic VRAM (comfy-aimdo) and pinned host buffers allocate outside PyTorch's caching
    allocator, so the allocator's peak alone can undercount; the poller reads the driver's
    free-memory figure every 5 ms and reports the peak of (total − free) above the child's
    baseline (CUDA context and anything else already resident when the child started).
    """

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"
        self.baseline = 0
        if self.cuda:
            torch.cuda.init()
            free, total = torch.cuda.mem_get_info()
            self.baseline = total - free
        self._peak_used = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            free, total = self.torch.cuda.mem_get_info()
            self._peak_used = max(self._peak_used, total - free)
            time.sleep(0.005)

    def __enter__(self) -> "Meter":
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self._peak_used = 0
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.sync()
        self.wall = time.perf_counter() - self.t0
        if self.cuda:
            self._stop.set()
            self._thread.join()
        self.result = {
            "wall_s": self.wall,
            "peak_alloc_gb": self.torch.cuda.max_memory_allocated() / 1024**3 if self.cuda else None,
            "peak_used_gb": max(0, self._peak_used - self.baseline) / 1024**3 if self.cuda else None,
        }

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def median_step(times: list[float], skip: int = 1) -> float | None:
    """Median interval between step stamps, leaving out the first ``skip`` gaps (warm-up, compile)
    where enough remain."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    if len(gaps) > skip + 1:
        gaps = gaps[skip:]
    return statistics.median(gaps) if gaps else None


# ----------------------------------------------------------------------------- ComfyUI side
class ComfyChild:
    """ComfyUI v0.33 started in this process with ``flags`` on its command line, plus this pack."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.device = spec["device"]
        comfyui = Path(spec["comfyui"])
        sys.path.insert(0, str(comfyui))
        sys.argv = ["main.py", *spec["flags"]]
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args

        self.args = comfy.cli_args.args
        self.dynamic_vram = False
        if self.device == "cuda":
            # main.py, before anything touches the GPU: hand comfy-aimdo its headroom
            import comfy_aimdo.control

            if comfy.cli_args.enables_dynamic_vram():
                headroom = None if self.args.reserve_vram is None else int(self.args.reserve_vram * 1024**3)
                try:
                    comfy_aimdo.control.init(simple_vram_headroom=headroom, nvml_pressure=not self.args.disable_nvml_pressure)
                except TypeError:
                    comfy_aimdo.control.init(simple_vram_headroom=headroom)

        work = Path(spec["workdir"])
        import folder_paths

        for name in ("checkpoints", "text_encoders", "loras", "vae", "embeddings", "diffusion_models"):
            (work / "models" / name).mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(name, str(work / "models" / name), is_default=True)
        self.output = work / "output" / spec["name"]
        for sub, setter in (("temp", folder_paths.set_temp_directory), ("input", folder_paths.set_input_directory)):
            (work / sub).mkdir(parents=True, exist_ok=True)
            setter(str(work / sub))
        self.output.mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(self.output))
        if hasattr(folder_paths, "set_user_directory"):
            (work / "user").mkdir(exist_ok=True)
            folder_paths.set_user_directory(str(work / "user"))
        self.folder_paths = folder_paths

        harness = load_harness()
        harness.import_comfyui_utils(comfyui)  # as main.py does, before ``nodes``
        import server

        self.server = harness.StubServer()
        server.PromptServer.instance = self.server
        import comfy.model_management as mm
        import execution
        import nodes

        self.mm, self.nodes, self.execution = mm, nodes, execution
        if self.device == "cuda":
            self._enable_dynamic_vram(comfyui)
        self.meter = Meter(self.device)
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        if not asyncio.run(nodes.load_custom_node(str(REPO))):
            raise RuntimeError("ComfyUI failed to import the HDM pack (see the log above)")
        self.step_times: list[float] = []
        nodes.NODE_CLASS_MAPPINGS[StepTimer.NAME] = StepTimer
        StepTimer.child = self
        if "cache_args" in inspect.signature(execution.PromptExecutor.__init__).parameters:  # v0.33; older: no cache_args
            self.executor = execution.PromptExecutor(self.server, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        else:
            self.executor = execution.PromptExecutor(self.server, cache_type=False)
        self.info = {
            "flags": spec["flags"],
            "vram_state": mm.vram_state.name,
            "dynamic_vram": self.dynamic_vram,
            "async_offload_streams": getattr(mm, "NUM_STREAMS", None),
            "pinned_memory": not getattr(self.args, "disable_pinned_memory", False) and getattr(mm, "MAX_PINNED_MEMORY", 0) > 0,
            "attention": self._attention(),
            "comfy_kitchen_backends": self._kitchen(),
            "loader_has_weight_dtype": "weight_dtype" in self.loader_inputs(),
            "device": mm.get_torch_device_name(mm.get_torch_device()),
            "vae_dtype": str(mm.vae_dtype(mm.get_torch_device())).replace("torch.", ""),
        }

    def _enable_dynamic_vram(self, comfyui: Path) -> None:
        """main.py's dynamic-VRAM switch-on, after ``comfy.model_management`` is imported."""
        import comfy.cli_args
        import comfy.memory_management
        import comfy.model_patcher
        import comfy_aimdo.control

        mm, args = self.mm, self.args
        supported = mm.is_nvidia() or (mm.is_amd() and getattr(mm, "rocm_version", (0, 0)) >= (7, 14))
        if not (args.enable_dynamic_vram or (comfy.cli_args.enables_dynamic_vram() and supported)):
            return
        if not args.enable_dynamic_vram and mm.torch_version_numeric < (2, 8):
            return
        devices = mm.get_all_torch_devices()
        try:
            ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024**3)) for d in devices)
        except TypeError:
            ok = comfy_aimdo.control.init_devices(d.index for d in devices)
        if ok:
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
            comfy.memory_management.aimdo_enabled = True
            self.dynamic_vram = True

    @staticmethod
    def _kitchen() -> str:
        """Which comfy_kitchen backends this install can use (the GPU bundle leaves its compiled ones out)."""
        try:
            import comfy_kitchen

            backends = comfy_kitchen.list_backends()
            return ", ".join(
                f"{name}: {'yes' if b.get('available') and not b.get('disabled') else 'no (' + str(b.get('unavailable_reason') or 'disabled') + ')'}"
                for name, b in backends.items()
            )
        except Exception as exc:  # an old or trimmed install: say so in the table
            return f"unknown ({type(exc).__name__}: {exc})"

    def _attention(self) -> str:
        import comfy.ldm.modules.attention as attn

        fn = getattr(attn, "optimized_attention", None)
        return getattr(fn, "__name__", str(fn))

    # -- running prompts ----------------------------------------------------------------------
    def run(self, prompt: dict) -> dict:
        """Validate and execute an API prompt; returns timing, memory, step times, new images and any error."""
        self.server.messages.clear()
        self.step_times = []
        before = set(self.output.rglob("*.png"))
        prompt_id = str(uuid.uuid4())
        validation = asyncio.run(self.execution.validate_prompt(prompt_id, copy.deepcopy(prompt), None))
        if not validation[0]:
            raise RuntimeError(f"prompt failed validation: {validation[1]} {validation[3]}")
        with self.meter as m:
            self.executor.execute(prompt, prompt_id, {"client_id": "bench"}, validation[2])
        messages = list(self.executor.status_messages)
        if not any(e == "execution_success" for e, _ in messages):
            err = next((d for e, d in messages if e in ("execution_error", "execution_interrupted")), messages[-1:])
            raise RuntimeError(f"prompt failed: {err.get('exception_message', err) if isinstance(err, dict) else err}")
        images = sorted(str(p) for p in set(self.output.rglob("*.png")) - before)
        texts = [d["text"] for e, d in self.server.messages if e == "progress_text"]
        return {**m.result, "step_times": list(self.step_times), "images": images, "progress_text": texts}

    def loader_inputs(self) -> dict:
        spec = self.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"].INPUT_TYPES()
        return {**spec.get("required", {}), **spec.get("optional", {})}

    def unload(self) -> None:
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()


class StepTimer:
    """Benchmark-only node: MODEL → the same MODEL with a post-CFG function that stamps each sampling step.

    ComfyUI's progress bar throttles its hook (at most a few calls a second), so it cannot time
    30 ms steps; ``set_model_sampler_post_cfg_function`` (the ModelPatcher API stock nodes use) runs
    once per step after CFG. The stamp syncs the device, as the headless rows' step callback does.
    """

    NAME = "HDMBenchStepTimer"
    child: "ComfyChild | None" = None
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        child = StepTimer.child

        def stamp(args):
            child.meter.sync()
            child.step_times.append(time.perf_counter())
            return args["denoised"]

        m = model.clone()
        m.set_model_sampler_post_cfg_function(stamp)
        return (m,)


def with_timer(prompt: dict, sampler: str) -> dict:
    """Route ``sampler``'s model input through a :class:`StepTimer` (node "99")."""
    prompt["99"] = {"class_type": StepTimer.NAME, "inputs": {"model": prompt[sampler]["inputs"]["model"]}}
    prompt[sampler]["inputs"]["model"] = ["99", 0]
    return prompt


# ----------------------------------------------------------------------------- prompts
def load_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def find(prompt: dict, cls: str) -> str:
    (node,) = [k for k, v in prompt.items() if v["class_type"] == cls]
    return node


def ksampler_prompt(p: dict, *, seed: int, weight_dtype: str | None = None, compile_backend: str | None = None, prefix: str = "ks") -> dict:
    """The shipped stock-KSampler workflow (HDM Checkpoint Loader → CLIP Text Encode → KSampler → VAE Decode)."""
    prompt = load_workflow("hdm_txt2img_ksampler")
    loader, ks = find(prompt, "HDMCheckpointLoader"), find(prompt, "KSampler")
    prompt[loader]["inputs"].update(ckpt_name=p["ckpt_name"], text_encoder=p["te_name"])
    if weight_dtype is not None:
        prompt[loader]["inputs"]["weight_dtype"] = weight_dtype
    prompt[prompt[ks]["inputs"]["positive"][0]]["inputs"]["text"] = p["prompt"]
    prompt[prompt[ks]["inputs"]["negative"][0]]["inputs"]["text"] = p["negative"]
    prompt[find(prompt, "EmptyLatentImage")]["inputs"].update(width=p["size"], height=p["size"])
    prompt[ks]["inputs"].update(seed=seed, steps=p["steps"], cfg=p["cfg"], sampler_name="euler")
    prompt[find(prompt, "SaveImage")]["inputs"]["filename_prefix"] = prefix
    if compile_backend is not None:
        prompt["90"] = {"class_type": "TorchCompileModel", "inputs": {"model": [loader, 0], "backend": compile_backend}}
        prompt[ks]["inputs"]["model"] = ["90", 0]
    return with_timer(prompt, ks)


def hdm_sampler_prompt(p: dict, *, seed: int, model: list | None = None, prefix: str = "hs") -> dict:
    """The shipped HDM Sampler workflow (camera + TREAD guidance) as shipped, at the benchmark's size."""
    prompt = load_workflow("hdm_sampler_camera_tread")
    loader, cam, hs = find(prompt, "HDMCheckpointLoader"), find(prompt, "HDMCamera"), find(prompt, "HDMSampler")
    prompt[loader]["inputs"].update(ckpt_name=p["ckpt_name"], text_encoder=p["te_name"])
    prompt[prompt[cam]["inputs"]["positive"][0]]["inputs"]["text"] = p["prompt"]
    prompt[prompt[cam]["inputs"]["negative"][0]]["inputs"]["text"] = p["negative"]
    prompt[find(prompt, "EmptyLatentImage")]["inputs"].update(width=p["size"], height=p["size"])
    prompt[hs]["inputs"].update(seed=seed, steps=p["steps"], cfg=p["cfg"])
    prompt[find(prompt, "SaveImage")]["inputs"]["filename_prefix"] = prefix
    if model is not None:
        prompt[hs]["inputs"]["model"] = model
    return with_timer(prompt, hs)


def ksampler_sigmas(steps: int, scheduler: str = "simple") -> list[float]:
    """The sigmas stock KSampler uses for HDM (a FLOW model, multiplier 1, shift 1)."""
    import comfy.model_base
    import comfy.samplers

    sampling = comfy.model_base.model_sampling(SimpleNamespace(sampling_settings={"multiplier": 1.0, "shift": 1.0}), comfy.model_base.ModelType.FLOW)
    return [float(s) for s in comfy.samplers.calculate_sigmas(sampling, scheduler, steps)]


# ----------------------------------------------------------------------------- ComfyUI cases
def case_workflows(c: ComfyChild, p: dict) -> dict:
    """Case a: both workflows, cold (loading included: image + peak memory) then warm (step time)."""
    out = {"sigmas_simple": ksampler_sigmas(p["steps"])}
    for name, build in (("ksampler", ksampler_prompt), ("hdm_sampler", hdm_sampler_prompt)):
        cold = c.run(build(p, seed=p["seed"], prefix=f"{c.spec['name']}_{name}"))
        warm = c.run(build(p, seed=p["seed"] + 1, prefix=f"{c.spec['name']}_{name}_warm")) if p["warm_runs"] else cold
        out[name] = {
            "image": cold["images"][0], "cold_wall_s": cold["wall_s"], "peak_alloc_gb": cold["peak_alloc_gb"],
            "peak_used_gb": cold["peak_used_gb"], "warm_wall_s": warm["wall_s"], "warm_peak_alloc_gb": warm["peak_alloc_gb"],
            "step_s": median_step(warm["step_times"]),
        }  # fmt: skip
    return out


def case_dtypes(c: ComfyChild, p: dict) -> dict:
    """Case b: weight storage dtypes through HDM Checkpoint Loader's ``weight_dtype`` (when it has one)."""
    opts = c.loader_inputs().get("weight_dtype")
    if opts is None:
        return {"skipped": "loader has no weight_dtype"}
    choices = opts[0] if isinstance(opts[0], list) else opts[1].get("options", [])
    rows = {}
    for dt in p["weight_dtypes"]:
        if dt not in choices:
            rows[dt] = {"skipped": f"loader's weight_dtype has no '{dt}' (it offers {choices})"}
            continue
        try:
            cold = c.run(ksampler_prompt(p, seed=p["seed"], weight_dtype=dt, prefix=f"{c.spec['name']}_dt_{dt}"))
            warm = c.run(ksampler_prompt(p, seed=p["seed"] + 1, weight_dtype=dt, prefix=f"{c.spec['name']}_dt_{dt}_warm")) if p["warm_runs"] else cold
            rows[dt] = {"image": cold["images"][0], "peak_alloc_gb": cold["peak_alloc_gb"], "warm_wall_s": warm["wall_s"],
                        "step_s": median_step(warm["step_times"])}  # fmt: skip
        except Exception as exc:
            rows[dt] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        c.unload()
    return rows


def case_compile(c: ComfyChild, p: dict) -> dict:
    """Case c: stock TorchCompileModel on the HDM MODEL; graph breaks and recompiles from dynamo's counters."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = c.run(ksampler_prompt(p, seed=p["seed"], prefix=f"{c.spec['name']}_eager"))
    first = c.run(ksampler_prompt(p, seed=p["seed"], compile_backend="inductor", prefix=f"{c.spec['name']}_compiled"))
    warm = c.run(ksampler_prompt(p, seed=p["seed"] + 1, compile_backend="inductor", prefix=f"{c.spec['name']}_compiled_warm"))
    eager_warm = c.run(ksampler_prompt(p, seed=p["seed"] + 1, prefix=f"{c.spec['name']}_eager_warm"))
    return {
        "eager_image": eager["images"][0], "compiled_image": first["images"][0],
        "compile_first_run_s": first["wall_s"], "eager_first_run_s": eager["wall_s"],
        "step_s": median_step(warm["step_times"]), "eager_step_s": median_step(eager_warm["step_times"]),
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": sorted(counters["graph_break"])[:10],
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
        "recompiles": sum(counters["recompiles"].values()),
    }  # fmt: skip


def case_train(c: ComfyChild, p: dict) -> dict:
    """Case d: HDM Train LyCORIS from a folder; its MODEL vs the saved file through Load LoRA, same sampling."""
    t = p["train"]
    loras = Path(c.folder_paths.get_folder_paths("loras")[0])
    before = set(loras.rglob("*.safetensors"))
    prompt = hdm_sampler_prompt(p, seed=p["seed"], model=["20", 0], prefix=f"{c.spec['name']}_trained")
    loader = find(prompt, "HDMCheckpointLoader")
    prompt["20"] = {"class_type": "HDMTrainLyCORIS", "inputs": {
        "model": [loader, 0], "clip": [loader, 1], "vae": [loader, 2], "dataset_folder": t["folder"],
        "resolution": t["resolution"], "crop": "bucket", "missing_captions": "error", "bracket_mode": "danbooru",
        "algorithm": "lora", "rank": 16, "alpha": 8.0, "lokr_factor": -1, "target": "attn-mlp", "exclude": "",
        "steps": t["steps"], "batch_size": t["batch"], "learning_rate": 1e-4, "scheduler": "constant", "warmup_steps": 0,
        "tread_rate": t["tread"], "seed": 0, "save_name": f"bench_{c.spec['name']}", "save_every": 0,
        "gradient_checkpointing": False, "precision": t["precision"], "captions": ""}}  # fmt: skip
    trained = c.run(prompt)
    saved = sorted(set(loras.rglob("*.safetensors")) - before)
    if len(saved) != 1:
        raise RuntimeError(f"the training node saved {len(saved)} files in models/loras")
    lora_name = saved[0].relative_to(loras).as_posix()
    via_lora = hdm_sampler_prompt(p, seed=p["seed"], model=["21", 0], prefix=f"{c.spec['name']}_loadlora")
    via_lora["21"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": [loader, 0], "lora_name": lora_name, "strength_model": 1.0}}
    loaded = c.run(via_lora)
    rate = None
    for text in reversed(trained["progress_text"]):
        if "it/s" in text:
            rate = float(text.rsplit("it/s", 1)[0].split()[-1])
            break
    return {"trained_image": trained["images"][0], "lora_image": loaded["images"][0], "wall_s": trained["wall_s"],
            "peak_alloc_gb": trained["peak_alloc_gb"], "peak_used_gb": trained["peak_used_gb"],
            "node_it_s": rate, "s_per_step": (1 / rate) if rate else None, "lora_name": lora_name,
            "last_progress": trained["progress_text"][-1:] }  # fmt: skip


COMFY_CASES: dict[str, Callable[[ComfyChild, dict], dict]] = {
    "workflows": case_workflows, "dtypes": case_dtypes, "compile": case_compile, "train": case_train,
}  # fmt: skip


# ----------------------------------------------------------------------------- headless side
def headless_images(spec: dict, p: dict) -> dict:
    """The images ComfyUI must reproduce: ``python -m hdm_core generate`` (HDM Sampler workflow's
    settings) and the pipeline API on KSampler's sigmas (the CLI has no 'simple' scheduler)."""
    import torch
    from PIL import Image

    from hdm_core import cli
    from hdm_core.flow import get_sampler
    from hdm_core.images import to_uint8
    from hdm_core.pipeline import GenerationParams, HDMPipeline, guidance_kwargs, initial_noise, velocity_fn

    out_dir = Path(spec["workdir"]) / "output" / spec["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p["headless_dtype"]]
    device = spec["device"]
    res: dict = {}
    # the HDM Sampler workflow as shipped: neutral camera, TREAD 0 / 0.5, hdm_uniform = the CLI's schedule
    png = out_dir / "cli_hdm_sampler.png"
    argv = ["generate", "--prompt", p["prompt"], "--negative", p["negative"], "--ckpt", p["ckpt"], "--te", p["te"],
            "--seed", str(p["seed"]), "--steps", str(p["steps"]), "--cfg", str(p["cfg"]), "--width", str(p["size"]),
            "--height", str(p["size"]), "--tread-gamma", "0", "--tread-gamma-uncond", "0.5", "--sampler", "euler",
            "--device", device, "--dtype", p["headless_dtype"], "--tile", "none", "--quiet", "--out", str(png)]  # fmt: skip
    meter = Meter(device)
    with meter as m:
        if cli.main(argv) != 0:
            raise RuntimeError("python -m hdm_core generate failed")
    res["hdm_sampler"] = {"image": str(png), **m.result}
    # the KSampler workflow: no camera node (neutral map), no TREAD, KSampler's 'simple' sigmas
    sigmas = p.get("sigmas_simple")
    pipe = HDMPipeline.from_files(p["ckpt"], p["te"], device=device, dtype=dt)
    params = GenerationParams(prompt=p["prompt"], negative=p["negative"], width=p["size"], height=p["size"], steps=p["steps"],
                              cfg=p["cfg"], seed=p["seed"], tread_gamma=0.0, tread_gamma_uncond=0.0)  # fmt: skip
    with torch.inference_mode():
        ctx, neg = pipe.encode_contexts(params)
        noise = initial_noise(1, p["size"], p["size"], params.seed, device=pipe.device)
        cond, uncond = guidance_kwargs(ctx, neg, params, pipe.device)
        ts = torch.tensor(sigmas, dtype=torch.float64) if sigmas else None
        if ts is None:
            from hdm_core.flow import flow_timesteps

            ts = flow_timesteps(params.steps)
        lat = get_sampler("euler")(velocity_fn(pipe.xut, cond, uncond, params.cfg), noise.float(), ts)
        img = pipe.decode(lat)[0]
    png = out_dir / "pipeline_ksampler.png"
    Image.fromarray(to_uint8(img)).save(png)
    res["ksampler"] = {"image": str(png), "sigmas": "KSampler 'simple'" if sigmas else "flow_timesteps (KSampler's sigmas unknown)"}
    del pipe
    return res


def headless_speed(spec: dict, p: dict) -> dict:
    """Case e, headless rows: one CFG step through the pipeline (eager; ``compile_blocks`` = ``--compile``),
    timed per step with a device sync like the ComfyUI rows, and the reference's two calls."""
    import torch

    from hdm_core.pipeline import GenerationParams, HDMPipeline

    device = spec["device"]
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p["headless_dtype"]]
    rows: dict = {}
    pipe = HDMPipeline.from_files(p["ckpt"], p["te"], device=device, dtype=dt)
    params = GenerationParams(prompt=p["prompt"], negative=p["negative"], width=p["size"], height=p["size"], steps=p["steps"],
                              cfg=p["cfg"], seed=p["seed"], tread_gamma=0.0, tread_gamma_uncond=0.0)  # fmt: skip
    meter = Meter(device)

    def timed() -> float | None:
        times: list[float] = []

        def cb(step, t, x, x0):
            meter.sync()
            times.append(time.perf_counter())

        pipe.sample(params, callback=cb)
        return median_step(times)

    rows["eager"] = timed()
    if spec.get("compile", True):
        t0 = time.perf_counter()
        pipe.xut.compile_blocks()
        first = timed()
        rows["compile_first_run_s"] = time.perf_counter() - t0
        rows["compiled"] = timed() if first is not None else None
    else:
        rows["compiled"] = None
    ref = p.get("reference")
    if ref:
        sys.path.insert(0, str(BENCH))
        from xut_forward import build_reference

        ctx, neg = pipe.encode_contexts(params)
        sd = {k: v.float().cpu() for k, v in pipe.xut.state_dict().items()}
        del pipe
        model = build_reference(Path(ref), sd, p["headless_dtype"]).to(device)
        s = p["size"] // 8
        x = torch.randn(1, 4, s, s, generator=torch.Generator().manual_seed(1)).to(device, dt)
        t = torch.tensor([0.7], device=device)
        addon = torch.zeros(1, 1, device=device, dtype=dt)

        def step():
            with torch.inference_mode(), torch.autocast(device, dtype=dt, enabled=dt != torch.float32):
                model(x, t, ctx.to(dt), addon_info=addon)
                model(x, t, neg.to(dt), addon_info=addon)

        for _ in range(3):
            step()
        ts = []
        for _ in range(10):
            meter.sync()
            t0 = time.perf_counter()
            step()
            meter.sync()
            ts.append(time.perf_counter() - t0)
        rows["reference"] = statistics.median(ts)
    return rows


def headless_train(spec: dict, p: dict) -> dict:
    """Case d, headless row: the same adapter and settings through ``hdm_core.train`` on random latents of the same size."""
    import torch

    try:
        import lycoris  # noqa: F401
    except ImportError:
        return {"skipped": "lycoris-lora is not installed"}
    from hdm_core.checkpoint import load_xut
    from hdm_core.text import TextEncoder
    from hdm_core.train import AdapterConfig, LatentData, TrainConfig, Trainer
    from hdm_core.train.optim import set_lr

    t = p["train"]
    device = spec["device"]
    te = TextEncoder.from_file(p["te"], dtype=torch.float32, device="cpu")
    ctx = te.encode([t["caption"]])[0].float()
    del te
    model = load_xut(p["ckpt"], dtype=torch.float32, device=device).eval()  # as the node: float32 copy, autocast
    s = t["resolution"] // 8
    gen = torch.Generator().manual_seed(0)
    n = max(8, 2 * t["batch"])
    data = LatentData([torch.randn(4, s, s, generator=gen) for _ in range(n)], [ctx.clone() for _ in range(n)])
    cfg = TrainConfig(steps=t["steps"], batch_size=t["batch"], mixed_precision=t["precision"] if t["precision"] != "fp32" else "no",
                      output_dir=str(Path(spec["workdir"]) / "headless_train"), save_state=False, tread_rate=t["tread"])  # fmt: skip
    adapter = AdapterConfig(algo="lora", dim=16, alpha=8.0, preset="attn-mlp")
    trainer = Trainer(model, data, adapter, cfg, device=device)
    meter = Meter(device)
    times = []
    with trainer.session():
        for i in range(t["steps"]):
            meter.sync()
            t0 = time.perf_counter()
            set_lr(trainer.optimizer, trainer.step, cfg.steps, cfg.optimizer)
            trainer.backward_micro_batches()
            trainer.optimizer_step()
            trainer.step += 1
            trainer.micro_step += 1
            meter.sync()
            times.append(time.perf_counter() - t0)
    skip = min(3, len(times) - 1)
    return {"s_per_step": statistics.median(times[skip:]), "steps_timed": len(times) - skip}


HEADLESS_CASES = {"images": headless_images, "speed": headless_speed, "train": headless_train}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", type=Path, required=True)
    spec = json.loads(ap.parse_args().spec.read_text())
    result: dict = {"name": spec["name"], "cases": {}}
    result_path = Path(spec["result"])

    def save() -> None:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(result_path)

    p = spec["params"]
    try:
        if spec["kind"] == "comfy":  # nothing imports torch before ComfyUI's start-up (comfy-aimdo first, as main.py)
            child = ComfyChild(spec)
            result["info"] = child.info
            cases = COMFY_CASES
        else:
            import_hdm_core()
            import torch

            result["info"] = {"device": torch.cuda.get_device_name() if spec["device"] == "cuda" else "cpu", "torch": torch.__version__}
            child, cases = spec, HEADLESS_CASES
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"start-up: {type(exc).__name__}: {exc}"
        save()
        sys.exit(1)
    save()
    for name in spec["cases"]:
        t0 = time.perf_counter()
        try:
            result["cases"][name] = cases[name](child, p)
        except Exception as exc:
            traceback.print_exc()
            result["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        result["cases"][name]["case_wall_s"] = time.perf_counter() - t0
        if spec["kind"] == "comfy":
            child.unload()
        save()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
