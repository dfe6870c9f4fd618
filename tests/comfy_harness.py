"""A real ComfyUI, in process, for the HDM node tests.

One instance per test session (module-level singletons; ComfyUI itself is a singleton):

* ComfyUI is imported from ``COMFYUI_PATH`` (see ``conftest.find_comfyui``) in CPU mode,
  its built-in node modules are initialised and this pack is loaded by ComfyUI's own
  ``nodes.load_custom_node`` — exactly how ComfyUI imports a custom node folder.
* Model (including ``tipo``), output and temp folders are temporary and registered with
  ``folder_paths``; nothing is written into the ComfyUI checkout.
* Tiny models are written there under the released file names: a tiny XUT (``hdm_core``,
  random weights) + an EQ-SDXL-VAE-layout VAE (every key and shape of the released VAE,
  random weights) as ``hdm-xut-340M-1024px-note.safetensors``, and a tiny Qwen3 in the
  Hugging Face layout as ``qwen3-0.6b.safetensors``.
* Prompts (API format) run through ``execution.validate_prompt`` and
  ``execution.PromptExecutor`` with a stub server, collecting the messages the frontend
  would receive (``execution_error`` carries the text of ComfyUI's error dialog).
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "xut_reference"
WORKFLOWS = REPO / "workflows"

CKPT_NAME = "hdm-xut-340M-1024px-note.safetensors"
TE_NAME = "qwen3-0.6b.safetensors"
VAE_NAME = "eq-sdxl-vae.safetensors"
#: Files both front-ends (ComfyUI and hdm_core) load to the same numbers (see Comfy.write_shared_models).
SHARED_CKPT_NAME = "hdm-shared-fp16.safetensors"
SHARED_TE_NAME = "qwen3-shared-bf16.safetensors"

TE_HIDDEN = 64
TINY_XUT = dict(
    patch_size=2, input_dim=4, dim=64, ctx_dim=TE_HIDDEN, heads=4, dim_head=16, mlp_dim=128,
    depth=2, enc_blocks=1, dec_blocks=2, addon_info_embs_dim=1,
    tread_config=dict(prev_trns_depth=1, post_trns_depth=1, dropout_ratio=0.5),
)
TINY_QWEN3 = dict(
    vocab_size=151936, hidden_size=TE_HIDDEN, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=128,
)


# ----------------------------------------------------------------------------- tiny models
def manifest() -> dict:
    return json.loads((FIXTURES / "full_manifest.json").read_text())


def random_vae_state_dict(seed: int = 0, dtype=torch.float16, decoder_width: int = 1, output_gain: float = 0.05) -> dict[str, torch.Tensor]:
    """Every ``vae.*`` key of the released file (diffusers layout), random but well scaled.

    Weights ~ N(0, 1/fan_in), norms 1, biases 0; the decoder's last conv is scaled by
    ``output_gain``: the default keeps decoded images inside [-1, 1] (pixel std about 0.016,
    no clipping); about 0.6 gives a pixel std near 0.2 (8-bit images with contrast). ``decoder_width``
    > 1 narrows the decoder's channels by that factor (ComfyUI reads the decoder width off
    ``decoder.conv_in``), which keeps test decodes fast; 1 gives exactly the released shapes.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for entry in manifest()["vae"]["keys"]:
        key, shape = entry["key"], list(entry["shape"])
        if decoder_width > 1 and key.startswith("vae.decoder."):
            shape = [d // decoder_width if d >= 128 and d % 128 == 0 else d for d in shape]
        if len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen) / fan_in**0.5
            if key.endswith("decoder.conv_out.weight"):
                t *= output_gain
        elif "norm" in key and key.endswith(".weight"):
            t = torch.ones(shape)
        else:
            t = torch.zeros(shape)
        out[key] = t.to(dtype)
    return out


def tiny_xut_state_dict(seed: int = 0, config: dict | None = None) -> dict[str, torch.Tensor]:
    """A random XUT with PyTorch's default initialisation."""
    import hdm_core

    torch.manual_seed(seed)
    model = hdm_core.XUT(hdm_core.XUTConfig.from_dict(config or TINY_XUT), dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_qwen3_state_dict(seed: int = 0, prefix: str = "model.", config: dict | None = None) -> dict[str, torch.Tensor]:
    """A random Qwen3 with the real key layout (Hugging Face names under ``prefix``)."""
    c = dict(TINY_QWEN3, **(config or {}))
    gen = torch.Generator().manual_seed(seed)
    h, hd = c["hidden_size"], c["head_dim"]
    q, kv, inter = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd, c["intermediate_size"]

    def lin(o, i):
        return torch.randn(o, i, generator=gen) / i**0.5

    def norm(n):
        return 1 + 0.1 * torch.randn(n, generator=gen)

    sd = {"embed_tokens.weight": torch.randn(c["vocab_size"], h, generator=gen), "norm.weight": norm(h)}
    for i in range(c["num_hidden_layers"]):
        p = f"layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": lin(q, h), p + "self_attn.k_proj.weight": lin(kv, h),
            p + "self_attn.v_proj.weight": lin(kv, h), p + "self_attn.o_proj.weight": lin(h, q),
            p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
            p + "mlp.gate_proj.weight": lin(inter, h), p + "mlp.up_proj.weight": lin(inter, h),
            p + "mlp.down_proj.weight": lin(h, inter),
            p + "input_layernorm.weight": norm(h), p + "post_attention_layernorm.weight": norm(h),
        })
    return {prefix + k: v for k, v in sd.items()}


def tiny_lora_state_dict(xut_sd: dict[str, torch.Tensor], rank: int = 4, seed: int = 1, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A LoRA in ComfyUI's generic ``lora_unet_<module path>`` naming over every Linear and the patch conv."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in xut_sd.items():
        if not key.endswith(".weight") or w.ndim not in (2, 4):
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        if w.ndim == 2:
            down = torch.randn(rank, w.shape[1], generator=gen) * scale / w.shape[1] ** 0.5
            up = torch.randn(w.shape[0], rank, generator=gen) * scale / rank**0.5
        else:
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=gen) * scale / fan_in**0.5
            up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * scale / rank**0.5
        out[name + ".lora_down.weight"] = down
        out[name + ".lora_up.weight"] = up
        out[name + ".alpha"] = torch.tensor(float(rank))
    return out


def save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# ----------------------------------------------------------------------------- ComfyUI
def import_comfyui_utils(comfyui_path: Path) -> None:
    """Import ComfyUI's top-level ``utils`` package, as main.py does before ``nodes``.

    In 0.3.x ``nodes`` puts comfy/ first on sys.path, where comfy/utils.py would shadow the
    package; a test that reached ComfyUI's ``nodes`` before (tests/tipo run alone) has already
    done that, so comfy/ is kept off sys.path meanwhile. Also used by benchmarks/comfy_gpu_child.py.
    """
    if not (comfyui_path / "utils" / "__init__.py").is_file():
        return
    shadow = (comfyui_path / "comfy").resolve()
    saved_path = list(sys.path)
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != shadow]
    if not hasattr(sys.modules.get("utils"), "__path__"):
        sys.modules.pop("utils", None)  # comfy/utils.py under the wrong name
    try:
        importlib.import_module("utils")
        for sub in ("extra_config", "install_util"):
            if (comfyui_path / "utils" / f"{sub}.py").is_file():
                importlib.import_module(f"utils.{sub}")
    finally:
        sys.path[:] = saved_path


class StubServer:
    """What ComfyUI's executor and progress hooks need from ``server.PromptServer`` (also the GPU benchmark's)."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []
        self.node_replace_manager = SimpleNamespace(register=lambda *args, **kwargs: None)  # v0.33 API nodes

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        pass

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"text": text, "node": node_id}))


@dataclass
class RunResult:
    ok: bool
    validation: Any
    messages: list
    outputs: dict[str, Any] = field(default_factory=dict)
    progress: list = field(default_factory=list)

    def error(self) -> dict | None:
        for event, data in self.messages:
            if event in ("execution_error", "execution_interrupted"):
                return dict(data, event=event)
        return None


class Comfy:
    """The in-process ComfyUI plus this pack, tiny models and helpers to run prompts."""

    def __init__(self, comfyui_path: Path) -> None:
        self.path = comfyui_path
        self.root = Path(tempfile.mkdtemp(prefix="hdm-comfy-tests-"))
        self.models = self.root / "models"
        for sub in ("checkpoints", "text_encoders", "vae", "loras", "embeddings", "diffusion_models", "tipo"):
            (self.models / sub).mkdir(parents=True)
        for sub in ("output", "temp", "input", "user"):
            (self.root / sub).mkdir()

        import comfy.cli_args

        args = comfy.cli_args.args
        args.cpu = True
        args.preview_method = comfy.cli_args.LatentPreviewMethod.Latent2RGB
        import folder_paths

        for name in ("checkpoints", "text_encoders", "vae", "loras", "embeddings", "diffusion_models", "tipo"):
            folder_paths.add_model_folder_path(name, str(self.models / name), is_default=True)
        folder_paths.set_output_directory(str(self.root / "output"))
        folder_paths.set_temp_directory(str(self.root / "temp"))
        folder_paths.set_input_directory(str(self.root / "input"))
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(str(self.root / "user"))
        self.folder_paths = folder_paths

        import_comfyui_utils(comfyui_path)
        import server

        self.server = StubServer()
        server.PromptServer.instance = self.server
        import comfy.utils
        import execution
        import nodes

        self.nodes = nodes
        self.execution = execution
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        before = set(nodes.NODE_CLASS_MAPPINGS)
        loaded = asyncio.run(nodes.load_custom_node(str(REPO)))
        assert loaded, "ComfyUI failed to import the HDM pack (see the log above)"
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        self.pack = sys.modules[str(REPO).replace(".", "_x_")]
        self.hdm = importlib.import_module(self.pack.__name__ + ".nodes")

        self.progress: list = []

        def hook(value, total, preview_image, prompt_id=None, node_id=None):
            self.progress.append((value, total, preview_image))
            import comfy.model_management

            comfy.model_management.throw_exception_if_processing_interrupted()

        comfy.utils.set_progress_bar_global_hook(hook)
        params = inspect.signature(execution.PromptExecutor.__init__).parameters
        if "cache_args" in params:
            self.executor = execution.PromptExecutor(self.server, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        else:
            self.executor = execution.PromptExecutor(self.server, cache_type=False)
        self.write_default_models()

    # -- models ---------------------------------------------------------------
    def write_default_models(self) -> None:
        self.xut_sd = tiny_xut_state_dict(0)
        # A narrower decoder keeps test decodes fast where ComfyUI reads the decoder width off
        # the weights (v0.33); older versions assume SDXL's widths, so they get the full VAE.
        import comfy.sd

        narrow_ok = "decoder_ddconfig" in inspect.getsource(comfy.sd.VAE.__init__)
        self.vae_sd = random_vae_state_dict(0, decoder_width=4 if narrow_ok else 1)
        ckpt = {"unet.model." + k: v for k, v in self.xut_sd.items()}
        ckpt.update(self.vae_sd)
        save(ckpt, self.models / "checkpoints" / CKPT_NAME)
        self.te_sd = tiny_qwen3_state_dict(0)
        save(self.te_sd, self.models / "text_encoders" / TE_NAME)

    def write_full_vae(self) -> Path:
        """A standalone EQ-SDXL-VAE file with exactly the released shapes (models/vae)."""
        path = self.models / "vae" / VAE_NAME
        if not path.exists():
            sd = random_vae_state_dict(0)
            save({k[len("vae."):]: v for k, v in sd.items()}, path)
        return path

    def write_shared_models(self) -> dict[str, Path]:
        """Weights that ComfyUI and ``hdm_core`` load to identical numbers, for front-end comparisons.

        ``{"ckpt": models/checkpoints/<SHARED_CKPT_NAME>, "te": models/text_encoders/<SHARED_TE_NAME>}``:
        the released layout in fp16 (the tiny XUT as ``unet.model.*`` + a VAE with every released
        ``vae.*`` shape, which older ComfyUI requires and hdm_core reads off the encoder; its
        output has contrast, so 8-bit images of it are sensitive), and the tiny Qwen3 in bf16 as
        Qwen3-0.6B ships. ComfyUI keeps text encoders in fp16 on every device and hdm_core
        upcasts file weights to its compute dtype, so an fp16/bf16 file gives both the same
        weights where an fp32 file would be rounded by ComfyUI alone.
        """
        ckpt = self.models / "checkpoints" / SHARED_CKPT_NAME
        te = self.models / "text_encoders" / SHARED_TE_NAME
        if not ckpt.exists():
            vae_sd = random_vae_state_dict(0, output_gain=0.6)
            save({**{"unet.model." + k: v.half() for k, v in self.xut_sd.items()}, **vae_sd}, ckpt)
        if not te.exists():
            save({k: v.bfloat16() for k, v in self.te_sd.items()}, te)
        return {"ckpt": ckpt, "te": te}

    def write_tipo_stub(self, name: str) -> Path:
        """A folder in models/tipo that HDM TIPO Prompt lists (``config.json`` only): enough to
        validate a workflow naming that model, not to run it."""
        folder = self.models / "tipo" / name
        if not (folder / "config.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps({"model_type": "llama", "note": "test placeholder"}))
        return folder

    def write_dataset(self, name: str) -> Path:
        """A two-image folder (with captions) named ``name`` in ComfyUI's input folder, as the training
        workflows and prompts name it (HDM Train LyCORIS checks that it exists when queued)."""
        folder = self.root / "input" / name
        if not folder.exists():
            sys.modules["standins"].write_image_folder(folder, [(64, 64)] * 2, seed=4)  # (tests/conftest.py loads it)
        return folder

    def write_lora(self, name: str = "hdm-lora.safetensors", **kwargs) -> Path:
        path = self.models / "loras" / name
        if not path.exists():
            save(tiny_lora_state_dict(self.xut_sd, **kwargs), path)
        return path

    def model_path(self, folder: str, name: str) -> Path:
        return self.models / folder / name

    # -- running prompts --------------------------------------------------------
    def run(self, prompt: dict, capture: dict[str, tuple[str, int]] | None = None) -> RunResult:
        """Validate and execute an API-format prompt; ``capture`` = {name: (node_id, output_index)}."""
        prompt = copy.deepcopy(prompt)
        capture_ids = {}
        for name, (node_id, index) in (capture or {}).items():
            cid = f"capture_{name}"
            prompt[cid] = {"class_type": "HDMTestCapture", "inputs": {"value": [node_id, index], "name": name}}
            capture_ids[name] = cid
        CAPTURED.clear()
        self.server.messages.clear()
        self.progress.clear()
        prompt_id = str(uuid.uuid4())
        validation = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not validation[0]:
            return RunResult(False, validation, [], {})
        self.executor.execute(prompt, prompt_id, {"client_id": "tests"}, validation[2])
        messages = list(self.executor.status_messages)
        ok = any(e == "execution_success" for e, _ in messages)
        return RunResult(ok, validation, messages, dict(CAPTURED), list(self.progress))

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


CAPTURED: dict[str, Any] = {}


class HDMTestCapture:
    """Test-only output node: keeps whatever reaches it (tensors, conditioning) for assertions."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*", {}), "name": ("STRING", {"default": ""})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types=None, **kwargs):
        return True

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never cached: every run captures afresh

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, value, name):
        CAPTURED[name] = value
        return {}


def execute_node(cls, *, unique_id: str | None = None, **inputs):
    """Run a V3 node's ``execute`` as ComfyUI's executor does: on a clone of the class holding the hidden inputs.

    Returns the ``io.NodeOutput`` (``.result`` the outputs, ``.ui`` what the node shows).
    ComfyUI v0.33 passes the clone its V3 data, 0.3.64 the hidden inputs alone.
    """
    from comfy_api.latest import io

    hidden = {io.Hidden.unique_id: unique_id} if unique_id is not None else {}
    if "v3_data" in inspect.signature(cls.PREPARE_CLASS_CLONE).parameters:
        clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": hidden})
    else:
        clone = cls.PREPARE_CLASS_CLONE(hidden)
    return clone.execute(**inputs)


_COMFY: Comfy | None = None


def get_comfy(comfyui_path: Path) -> Comfy:
    global _COMFY
    if _COMFY is None:
        _COMFY = Comfy(comfyui_path)
        _COMFY.nodes.NODE_CLASS_MAPPINGS["HDMTestCapture"] = HDMTestCapture
        import atexit

        atexit.register(_COMFY.cleanup)
    return _COMFY


# ----------------------------------------------------------------------------- workflows
def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def find_node(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type} in the prompt, found {ids}"
    return ids[0]


def shrink(prompt: dict, width: int = 64, height: int = 64, steps: int = 3) -> dict:
    """The same workflow at test size: tiny image and few steps (everything else unchanged)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs["width"], inputs["height"] = width, height
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
    return prompt


def combo_options(definition) -> list | None:
    """The options of a combo input in either spelling (V1 ``[options]``, V3 ``"COMBO", {"options": ...}``), else None."""
    kind = definition[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list((definition[1] if len(definition) > 1 else {}).get("options", []))
    return None


def is_widget(definition) -> bool:
    return combo_options(definition) is not None or definition[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMFY_DYNAMICCOMBO_V3")


def _expand_dynamic_combos(ordered: list, values: list) -> list:
    """A DynamicCombo (v0.33) is a combo widget followed, as the frontend inserts them, by the
    widgets of the option its saved value chose, named ``combo.input``."""
    out, position = [], 0
    for name, definition in ordered:
        if definition[0] != "COMFY_DYNAMICCOMBO_V3":
            out.append((name, definition))
            position += is_widget(definition) * (2 if (definition[1] if len(definition) > 1 else {}).get("control_after_generate") else 1)
            continue
        options = {o["key"]: o["inputs"] for o in definition[1]["options"]}
        chosen = values[position] if position < len(values) else None
        out.append((name, ["COMBO", {"options": list(options)}]))
        position += 1
        sub = options.get(chosen, {})
        for sub_name, sub_def in list(sub.get("required", {}).items()) + list(sub.get("optional", {}).items()):
            out.append((f"{name}.{sub_name}", sub_def))
            position += is_widget(sub_def)
    return out


def dynamic_combos(node) -> dict[str, dict[str, list]]:
    """The DynamicCombos (v0.33) of a node class or of its input spec (``INPUT_TYPES()``, or
    ``/object_info``'s ``input``): ``{combo: {option: [(input, definition), …]}}``; empty elsewhere."""
    spec = node.INPUT_TYPES() if hasattr(node, "INPUT_TYPES") else node
    found = {}
    for group in ("required", "optional"):
        for name, d in spec.get(group, {}).items():
            if d[0] == "COMFY_DYNAMICCOMBO_V3":
                found[name] = {
                    o["key"]: list(o["inputs"].get("required", {}).items()) + list(o["inputs"].get("optional", {}).items())
                    for o in d[1]["options"]
                }  # fmt: skip
    return found


def widget_names(node) -> list[str]:
    """A node's widgets in the order a UI workflow saves their values (flat layout: DynamicCombos
    count as one widget), ``control_after_generate`` after a seed that has one."""
    spec = node.INPUT_TYPES() if hasattr(node, "INPUT_TYPES") else node
    names = []
    for name, d in list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items()):
        if is_widget(d):
            names += [name, "control_after_generate"] if d[1].get("control_after_generate") else [name]
    return names


def input_definitions(node) -> dict:
    """Every input definition of a node class or input spec by name: a DynamicCombo as a combo of
    its keys, its options' inputs under their own names (the first option's wins where two share
    a name, as HDM TIPO Prompt's ``model`` lists do)."""
    spec = node.INPUT_TYPES() if hasattr(node, "INPUT_TYPES") else node
    out = {**spec.get("required", {}), **spec.get("optional", {})}
    for combo, options in dynamic_combos(spec).items():
        out[combo] = ["COMBO", {"options": list(options)}]
        for own in options.values():
            for name, definition in own:
                out.setdefault(name, definition)
    return out


def flat_choices(class_type: str, inputs: dict) -> dict[str, str]:
    """The option of each DynamicCombo that a prompt saved with flat inputs stands for (the test's
    own statement of the rule web/hdm_saved_layouts.js applies to saved UI workflows)."""
    if class_type == "HDMTrainLyCORIS":
        folder = isinstance(inputs.get("dataset_folder"), str) and inputs["dataset_folder"].strip() != ""
        source = "folder" if folder else "images" if "images" in inputs else "latent" if "latent" in inputs else "folder"
        return {"algorithm": inputs["algorithm"], "data_source": source}
    if class_type == "HDMTipoPrompt":
        return {"backend": "gguf" if str(inputs.get("model", "")).lower().endswith(".gguf") else "transformers"}
    return {}


def nest_flat_inputs(node, class_type: str, inputs: dict) -> dict:
    """A node's flat inputs (an older API prompt) as the frontend queues the same node on a
    DynamicCombo host: each combo's option (:func:`flat_choices`) with its inputs as
    ``combo.input`` (widgets the prompt lacks at their defaults), the other options' inputs left
    out. Unchanged on hosts without DynamicCombo. ``node``: as for :func:`dynamic_combos`."""
    combos = dynamic_combos(node)
    if not combos:
        return dict(inputs)
    chosen = flat_choices(class_type, inputs)
    moved = {n for options in combos.values() for own in options.values() for n, _ in own}
    out = {k: v for k, v in inputs.items() if k not in moved and k not in combos}
    for combo, options in combos.items():
        out[combo] = chosen[combo]
        for n, d in options[chosen[combo]]:
            if n in inputs:
                out[f"{combo}.{n}"] = inputs[n]
            elif is_widget(d):
                out[f"{combo}.{n}"] = combo_options(d)[0] if "default" not in d[1] and combo_options(d) else d[1].get("default")
    return out


def ui_to_api(ui: dict, node_classes: dict) -> dict:
    """Convert a UI (litegraph) workflow to API format the way the frontend does for these files.

    Widgets are matched positionally against each node's ``INPUT_TYPES``; an INT input with
    ``control_after_generate`` (seeds) is followed by one extra widget value in the UI file.
    Links give the connected inputs. An optional widget the file has no value for (an input
    added to the node after the file was saved) keeps its default, as in the frontend.
    Only what the shipped workflows use is supported (no subgraphs, primitives, reroutes or
    bypassed nodes); anything else fails the test.
    """
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        assert node.get("mode", 0) == 0, f"node {node['id']} is muted/bypassed"
        cls = node_classes[node["type"]]
        spec = cls.INPUT_TYPES()
        optional = set(spec.get("optional", {}))
        ordered = list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())
        migrated = migrate_saved_node(cls, node)  # what the pack's frontend extension does on load
        node = migrated or node
        saved_values = list(node.get("widgets_values", []))
        ordered = _expand_dynamic_combos(ordered, saved_values)
        linked = {inp["name"]: links[inp["link"]] for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = saved_values
        inputs: dict[str, Any] = {}
        for name, definition in ordered:
            opts = definition[1] if len(definition) > 1 else {}
            widget = is_widget(definition)
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
                if widget and values:  # a widget converted to an input still holds its value slot
                    values.pop(0)
                    if opts.get("control_after_generate"):
                        values.pop(0)
                continue
            if not widget:
                continue
            if not values and name in optional and "default" in opts:
                inputs[name] = opts["default"]
                continue
            assert values, f"node {node['id']} ({node['type']}): no widget value left for '{name}'"
            inputs[name] = values.pop(0)
            if opts.get("control_after_generate"):
                control = values.pop(0)
                assert control in ("fixed", "increment", "decrement", "randomize"), control
        assert not values, f"node {node['id']} ({node['type']}): unused widget values {values}"
        for name, link in linked.items():  # a linked socket the node does not declare (the frontend sends it too)
            inputs.setdefault(name, [str(link[1]), link[2]])
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


# ----------------------------------------------------------------------------- the reference
def reference_latent(
    comfy: Comfy,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    *,
    seed: int,
    shape: tuple[int, int, int, int],
    cfg: float,
    steps: int | None = None,
    sigmas: torch.Tensor | None = None,
    camera: tuple[float, float, float] = (0.0, 0.0, 1.0),
    gammas: tuple[float, float] = (0.0, 0.0),
    xut_sd: dict | None = None,
) -> torch.Tensor:
    """What HDM Sampler must produce, computed with ``hdm_core`` alone (VAE-space latent).

    Same weights, ``hdm_core.flow.seeded_noise``, ``flow_timesteps`` (or given sigmas),
    ``sample_euler`` over ``cfg_model``, the reference camera map, and TREAD keep-masks drawn
    with hdm_core's seeding rule (``hdm_core.tread.selection_seed``).
    """
    import hdm_core
    from hdm_core import flow, latents, positions, tread

    xut = hdm_core.load_xut(xut_sd if xut_sd is not None else comfy.xut_sd, dtype=torch.float32)
    b, c, h, w = shape
    pos_map = positions.camera_pos_map(h, w, *camera)[None]
    num_img = (h // 2) * (w // 2)

    def branch(ctx, branch_index, gamma):
        def run(x, t, **_):
            mask = None
            if gamma > 0:
                seeds = [tread.selection_seed(seed, branch_index, row, float(tt)) for row, tt in enumerate(t.tolist())]
                mask = tread.seeded_keep_mask(num_img, gamma, seeds)
            return xut(x, t, ctx.expand(x.shape[0], -1, -1), pos_map=pos_map, tread_mask=mask)

        return run

    cond_fn = branch(positive, 0, gammas[0])
    uncond_fn = branch(negative, 1, gammas[1]) if negative is not None else None

    def velocity(x, t):
        v_c = cond_fn(x, t)
        if uncond_fn is None or cfg == 1.0:
            return v_c
        v_u = uncond_fn(x, t)
        return v_u + cfg * (v_c - v_u)

    ts = sigmas.double() if sigmas is not None else flow.flow_timesteps(steps)
    noise = flow.seeded_noise(shape, seed)
    return latents.denormalize(flow.sample_euler(velocity, noise, ts))


def txt2img_prompt(text: str = "1girl, izuna (blue archive), smile", negative: str = "", *, seed: int = 1, steps: int = 3,
                   cfg: float = 3.0, width: int = 64, height: int = 64, scheduler: str = "hdm_uniform",
                   sampler_name: str = "euler", camera=None, gammas=None, bracket_mode: str = "danbooru",
                   ckpt: str = CKPT_NAME, text_encoder: str = TE_NAME) -> dict:
    """A small HDM-node prompt (loader → text encode ×2 → [camera] → [TREAD] → HDM Sampler → HDM VAE Decode)."""
    p = {
        "1": {"class_type": "HDMCheckpointLoader", "inputs": {"ckpt_name": ckpt, "text_encoder": text_encoder}},
        "2": {"class_type": "HDMTextEncode", "inputs": {"clip": ["1", 1], "text": text, "bracket_mode": bracket_mode}},
        "3": {"class_type": "HDMTextEncode", "inputs": {"clip": ["1", 1], "text": negative, "bracket_mode": bracket_mode}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
    }
    pos, neg = ["2", 0], ["3", 0]
    if camera is not None:
        p["5"] = {"class_type": "HDMCamera", "inputs": {"positive": pos, "negative": neg, "x_shift": camera[0], "y_shift": camera[1], "zoom": camera[2]}}
        pos, neg = ["5", 0], ["5", 1]
    if gammas is not None:
        p["6"] = {"class_type": "HDMTreadGuidance", "inputs": {"positive": pos, "negative": neg, "positive_gamma": gammas[0], "negative_gamma": gammas[1]}}
        pos, neg = ["6", 0], ["6", 1]
    p["7"] = {"class_type": "HDMSampler", "inputs": {
        "model": ["1", 0], "positive": pos, "negative": neg, "latent_image": ["4", 0], "seed": seed, "steps": steps,
        "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler, "denoise": 1.0}}
    p["8"] = {"class_type": "HDMVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2], "tiled": False, "tile_size": 1024, "overlap": 128}}
    return p


# ----------------------------------------------------------------------------- validation
def validation_errors(cui: "Comfy", prompt: dict) -> list[str]:
    """The details of every node error ComfyUI reports when the prompt is queued (the output: the
    image of node "8", HDM VAE Decode in :func:`txt2img_prompt`, unless the prompt has its own)."""
    if not any(n["class_type"] == "HDMTestCapture" for n in prompt.values()):
        prompt = dict(prompt, out={"class_type": "HDMTestCapture", "inputs": {"value": ["8", 0], "name": "image"}})
    ok, error, _, node_errors = asyncio.run(cui.execution.validate_prompt("v3", prompt, None))
    assert ok or node_errors, error
    return [] if ok else [e["details"] for err in node_errors.values() for e in err["errors"]]


def train_inputs(**overrides) -> dict:
    """HDM Train LyCORIS's inputs under their flat names: one fast lora step on the ``v3_dataset``
    folder with the files of HDM Checkpoint Loader "1"; ``overrides`` replace or add inputs."""
    base = {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset_folder": "v3_dataset", "resolution": 64, "crop": "bucket",
        "missing_captions": "error", "bracket_mode": "danbooru", "algorithm": "lora", "rank": 4, "alpha": 4.0, "lokr_factor": -1,
        "target": "attn-mlp", "exclude": "", "steps": 1, "batch_size": 1, "learning_rate": 1e-3, "scheduler": "constant",
        "warmup_steps": 0, "tread_rate": 0.5, "seed": 0, "save_name": "v3_check", "save_every": 0,
        "gradient_checkpointing": False, "precision": "auto",
    }  # fmt: skip
    return {**base, **overrides}


def train_only_prompt(**overrides) -> dict:
    """HDM Checkpoint Loader "1" (the harness's tiny files) → HDM Train LyCORIS "2" (:func:`train_inputs`)."""
    return {
        "1": {"class_type": "HDMCheckpointLoader", "inputs": {"ckpt_name": CKPT_NAME, "text_encoder": TE_NAME}},
        "2": {"class_type": "HDMTrainLyCORIS", "inputs": train_inputs(**overrides)},
    }


def train_prompt(**inputs) -> dict:
    """txt2img whose MODEL first goes through HDM Train LyCORIS "9" (:func:`train_inputs`)."""
    prompt = txt2img_prompt()
    prompt["9"] = {"class_type": "HDMTrainLyCORIS", "inputs": train_inputs(**inputs)}
    prompt["7"]["inputs"]["model"] = ["9", 0]
    return prompt


# ----------------------------------------------------------------------------- the frontend extension
def saved_layouts_js(calls: list[tuple[dict, dict]]) -> dict:
    """Run the pack's web/hdm_saved_layouts.js under Node: ``{"out": [migrateSavedNode(nodeData, info)
    for each call], "LEGACY_WIDGETS": ...}``. The very code the frontend runs when a workflow loads,
    so the tests that turn saved UI workflows into prompts see what a user's browser sees."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise RuntimeError("Node.js is needed to run web/hdm_saved_layouts.js in the tests (apt-get install nodejs)")
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "hdm_saved_layouts.mjs"  # .mjs: an ES module whatever package.json says
        module.write_text((REPO / "web" / "hdm_saved_layouts.js").read_text(encoding="utf-8"), encoding="utf-8")
        script = (
            f"import {{ migrateSavedNode, LEGACY_WIDGETS }} from {json.dumps(module.as_uri())};"
            "let data = ''; process.stdin.on('data', (c) => (data += c)); process.stdin.on('end', () => {"
            "const calls = JSON.parse(data); const out = calls.map(([d, i]) => migrateSavedNode(d, i));"
            "process.stdout.write(JSON.stringify({ out, LEGACY_WIDGETS })); });"
        )
        run = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(calls), capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"web/hdm_saved_layouts.js failed under Node: {run.stderr[-2000:]}")
    return json.loads(run.stdout)


def node_info(cls) -> dict:
    """The node's definition as ComfyUI's server sends it to the frontend (``/object_info``)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return json.loads(json.dumps(cls.GET_NODE_INFO_V1()))
    spec = cls.INPUT_TYPES()
    return {"name": cls.__name__, "input": spec, "input_order": {k: list(v) for k, v in spec.items()}}


def migrate_saved_node(cls, node: dict) -> dict | None:
    """A UI workflow's node as web/hdm_dynamic_combo.js hands it to the frontend: rewritten into the
    node's current layout when saved in an older one, else None (nothing to do)."""
    spec = cls.INPUT_TYPES()
    if not any(d[0] == "COMFY_DYNAMICCOMBO_V3" for group in spec.values() for d in group.values()):
        return None  # a host without DynamicCombo: the extension does nothing
    return saved_layouts_js([(node_info(cls), node)])["out"][0]