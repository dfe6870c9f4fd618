"""ComfyUI nodes for TIPO prompt expansion and HDM's prompt layout (thin adapters over ``hdm_core.tipo``).

TIPO models live in ``models/tipo`` (registered here as the ``tipo`` model folder, so
``extra_model_paths.yaml`` can add more): transformers folders, or ``.gguf`` files when
llama-cpp-python works. Nothing is downloaded or installed; tipo-kgen is imported only when a
node runs, so a missing or broken optional package cannot break ComfyUI's start.

HDM TIPO Prompt's model inputs come in two layouts, chosen by the host (``v3.DYNAMIC_INPUTS``),
as HDM Train LyCORIS's ``algorithm`` does (see ``train_algorithm``):

* **flat** (ComfyUI without DynamicCombo, e.g. 0.3.64): ``model`` (folders and .gguf files in one
  list) and ``device`` where every release so far had them, and ``precision`` appended last
  (optional, so workflows saved before it keep their ``widgets_values`` positions).
* **dynamic** (v0.33): ``model`` and ``device`` leave the main list; an optional DynamicCombo
  ``backend`` (transformers | gguf), last, shows only the chosen backend's ``model`` list,
  ``device`` and (transformers) ``precision``. ComfyUI passes them nested
  (``backend={"backend": "gguf", "model": ..., "device": ...}``). They are all optional and the
  node accepts all inputs, so an API prompt saved in the flat layout (``"model": ...``, no
  backend) still validates and runs, the backend following its model file.

``LEGACY_WIDGETS`` is the flat layout's widget order as every release before ``precision`` saved
it (``control_after_generate`` is the seed's control widget), for the frontend's migration of
saved UI workflows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

import comfy.model_management
import folder_paths

from ..hdm_core import tipo as core
from .v3 import ADVANCED, DYNAMIC_INPUTS, check_options, check_ranges, dynamic_choice, io, schema

FOLDER = "tipo"
NO_MODEL = "(no TIPO model in models/tipo)"
#: The dynamic layout's placeholders when one backend has no model (the combo needs an option).
NO_MODEL_OF = {"transformers": "(no TIPO model folder in models/tipo)", "gguf": "(no .gguf TIPO model in models/tipo)"}
BACKENDS = ("transformers", "gguf")
DEVICES = ["auto", "cpu"]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
#: What a backend's model is, for messages.
_KIND_NAME = {"transformers": "a transformers model folder", "gguf": "a .gguf file"}
_PLACEHOLDERS = {NO_MODEL: None, **{v: k for k, v in NO_MODEL_OF.items()}}

LEGACY_WIDGETS: tuple[str, ...] = (
    "tags", "nl_prompt", "ban_tags", "model", "format", "tag_length", "nl_length", "width", "height", "temperature",
    "top_p", "top_k", "min_p", "seed", "control_after_generate", "device", "max_retry", "max_new_tokens",
    "length_check", "escape_brackets",
)  # fmt: skip

folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def _folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def _models(kind: str | None = None) -> dict[str, Path]:
    """``{name: path}`` of the TIPO models found, all of them or those of one backend."""
    found = core.find_models(_folders())
    return {n: p for n, p in found.items() if kind is None or core.model_kind(p) == kind}


def _model_names(kind: str | None = None) -> list[str]:
    """The model combo's options: the models found (of ``kind``), else its placeholder."""
    return list(_models(kind)) or [NO_MODEL_OF[kind] if kind else NO_MODEL]


def _no_model_message(kind: str | None) -> str:
    """Why a placeholder cannot run: no model at all (where to get one), or none for this backend."""
    found = _models()
    if not found:
        return core.no_model_message(_folders())
    where = ", ".join(_folders())
    if kind is None:
        return f"No TIPO model is chosen (the list was empty when this was saved); pick one of: {', '.join(found)}"
    other = next(b for b in BACKENDS if b != kind)
    get = (f"put a TIPO model folder there (config.json, model.safetensors, tokenizer.model and the tokenizer configs from "
           f"{core.loader.MODEL_SOURCE})" if kind == "transformers" else
           f"put a .gguf TIPO model there (e.g. TIPO-200M-ft2-F16.gguf from {core.loader.MODEL_SOURCE}; needs llama-cpp-python)")  # fmt: skip
    return (f"HDM TIPO Prompt: backend '{kind}' has no model: no {_KIND_NAME[kind][2:]} in {where}. Choose backend "
            f"'{other}' for the model(s) there ({', '.join(found)}), or {get}.")  # fmt: skip


#: What a backend input takes when the prompt gives it neither flat nor nested (model: the backend's first one).
_DEFAULTS: dict[str, Any] = {"model": None, "device": "auto", "precision": "auto"}


def _choose(backend: Any, model: Any, device: Any, precision: Any) -> tuple[str | None, Any, dict[str, Any]]:
    """``(backend or None, model name, {"device", "precision"})`` from either layout; raises ``TipoModelError``.

    ``backend`` is the DynamicCombo's nested dict, a backend name, or ``None`` (a flat prompt:
    the backend then follows the model file, as before the choice existed). The flat
    ``model``/``device``/``precision`` (older prompts, or the flat host) win over nested ones.
    Checks the options and the "no model" placeholders; the model name itself is checked by
    the caller (``None``: linked, known only at run time).
    """
    kind, values = dynamic_choice("backend", backend, {"model": model, "device": device, "precision": precision}, _DEFAULTS)
    if kind is not None and kind not in BACKENDS:
        raise core.TipoModelError(f"HDM TIPO Prompt: backend '{kind}' is not one of the options ({', '.join(BACKENDS)})")
    for name, options in (("device", DEVICES), ("precision", PRECISIONS)):
        if values[name] is not None and values[name] not in options:
            raise core.TipoModelError(f"HDM TIPO Prompt: {name} '{values[name]}' is not one of the options ({', '.join(options)})")
    name = values.pop("model")
    if name in _PLACEHOLDERS:
        raise core.TipoModelError(_no_model_message(kind or _PLACEHOLDERS[name]))
    return kind, name, values


def _check_kind(kind: str | None, name: str, path: Path) -> str:
    """The model's backend; a clear error when the chosen backend is another one."""
    actual = core.model_kind(path)
    if kind is not None and actual != kind:
        raise core.TipoModelError(
            f"HDM TIPO Prompt: backend '{kind}' is chosen, but TIPO model '{name}' is {_KIND_NAME[actual]} (backend "
            f"'{actual}'); choose backend '{actual}' for it, or {_KIND_NAME[kind]} as the model"
        )
    return actual



_OUTPUT_TOOLTIPS = (
    "The prompt in HDM's layout, with literal brackets escaped as \\( \\) so ComfyUI's text encoders do not read "
    "them as weights (unless escape_brackets is off). Feed it to a text encode node.",
    "The same prompt without escapes, for tools that do not read ComfyUI's weight syntax.",
    "JSON: the tags per category (special, characters, copyrights, artist, general, quality, rating, meta) and the "
    "natural language (extended, generated), unescaped.",
)


def _outputs() -> list:
    """prompt, prompt_unescaped, categories (STRING each); output ids differ from the input ids, as V3 requires."""
    names = ("prompt", "prompt_unescaped", "categories")
    return [io.String.Output(f"{n}_out", display_name=n, tooltip=t) for n, t in zip(names, _OUTPUT_TOOLTIPS)]


def _tags() -> io.Input:
    return io.String.Input(
        "tags",
        multiline=True,
        default="",
        tooltip="Danbooru tags, comma-separated. Brackets in tag names are literal: izuna (blue archive) and "
        "izuna \\(blue archive\\) are the same tag. (tag:1.2) keeps its weight; BREAK stays after the tag before it.",
    )


def _nl() -> io.Input:
    return io.String.Input(
        "nl_prompt", multiline=True, default="", tooltip="Natural-language description. Brackets are literal; (word:1.2) keeps its weight."
    )


def _format() -> io.Input:
    return io.String.Input(
        "format",
        multiline=True,
        default=core.HDM_TEMPLATE,
        tooltip="Output layout. Placeholders: <|special|> <|characters|> <|copyrights|> <|artist|> <|general|> "
        "<|extended|> (your natural language, extended; TIPO's own text when you gave none) <|generated|> <|quality|> "
        "<|rating|> <|meta|>. Empty parts disappear with the comma or period after them. Default: HDM's layout.",
    )


def _escape() -> io.Input:
    return io.Boolean.Input(
        "escape_brackets", default=True, tooltip="Escape literal brackets as \\( \\) for ComfyUI's prompt weights. Off: plain brackets."
    )


def _check_format(format: str | None) -> bool | str:
    """validate_inputs' check of a format template: ``True`` or the error message (None: linked, checked at run time)."""
    if format is None:
        return True
    try:
        core.check_template(format)
    except core.TipoError as exc:
        return str(exc)
    return True


def _categories_json(categories: dict) -> str:
    return json.dumps(categories, ensure_ascii=False, indent=1)


_MODEL_TOOLTIP = {
    None: "TIPO model from models/tipo: a folder with config.json, model.safetensors, tokenizer.model and the tokenizer "
    "configs (e.g. KBlueLeaf/TIPO-200M-ft2), or a .gguf file (needs llama-cpp-python).",
    "transformers": "TIPO model folder from models/tipo: config.json, model.safetensors, tokenizer.model and the tokenizer "
    "configs (e.g. KBlueLeaf/TIPO-200M-ft2).",
    "gguf": "TIPO .gguf file from models/tipo (e.g. TIPO-200M-ft2-F16.gguf from KBlueLeaf/TIPO-200M-ft2); needs "
    "llama-cpp-python.",
}
_DEVICE_TOOLTIP = {
    None: "auto: ComfyUI's device (a transformers folder runs on the GPU, parked on the CPU between runs; a .gguf file "
    "gets all its layers on the GPU); cpu: the CPU.",
    "transformers": "auto: ComfyUI's device (on a GPU the model is parked on the CPU between runs); cpu: the CPU.",
    "gguf": "auto: all layers on the GPU when ComfyUI runs on one (needs a GPU build of llama-cpp-python); cpu: the CPU.",
}
_PRECISION_TOOLTIP = "Dtype of a transformers model folder: auto = fp16 on GPUs, fp32 on the CPU; bf16 and fp16 halve its memory."
_BACKEND_TOOLTIP = ("How the TIPO model runs: transformers (a model folder, e.g. TIPO-200M-ft2/) or gguf (a single .gguf "
                    "file through llama-cpp-python). Shows only the chosen backend's models and options.")  # fmt: skip


def _model_input(kind: str | None, nested: bool) -> io.Input:
    extra = {"optional": True} if nested else {}
    return io.Combo.Input("model", options=_model_names(kind), tooltip=_MODEL_TOOLTIP[kind], **extra)


def _device_input(kind: str | None, nested: bool) -> io.Input:
    extra = {"optional": True} if nested else {}
    return io.Combo.Input("device", **ADVANCED, options=DEVICES, default="auto", tooltip=_DEVICE_TOOLTIP[kind], **extra)


def _precision_input(flat: bool) -> io.Input:
    tip = _PRECISION_TOOLTIP + (" Ignored for a .gguf file (its precision is in the file)." if flat else "")
    return io.Combo.Input("precision", **ADVANCED, options=PRECISIONS, default="auto", optional=True, tooltip=tip)


def _backend_input() -> io.Input:
    """The DynamicCombo: each backend with only its own inputs, all optional so flat prompts still validate.

    The first option is the default: transformers, unless only .gguf models are there.
    """
    options = {
        "transformers": [_model_input("transformers", True), _device_input("transformers", True), _precision_input(False)],
        "gguf": [_model_input("gguf", True), _device_input("gguf", True)],
    }
    order = ["gguf", "transformers"] if _models("gguf") and not _models("transformers") else list(BACKENDS)
    return io.DynamicCombo.Input(
        "backend", optional=True, tooltip=_BACKEND_TOOLTIP, options=[io.DynamicCombo.Option(k, options[k]) for k in order]
    )


class HDMTipoPrompt(io.ComfyNode):
    """Expand a prompt with a local TIPO model into HDM's layout."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = core.TipoSettings()
        flat = not DYNAMIC_INPUTS
        return schema(
            node_id="HDMTipoPrompt",
            display_name="HDM TIPO Prompt",
            description=(
                "TIPO prompt expansion: adds danbooru tags and natural language to your prompt with a small local language "
                "model (models/tipo), sorts everything into HDM's layout and escapes brackets for ComfyUI. The same seed "
                "gives the same prompt."
            ),
            search_aliases=["tipo", "prompt expansion", "prompt generator", "danbooru tags", "anime prompt", "prompt upsampling"],
            inputs=[
                _tags(),
                _nl(),
                io.String.Input(
                    "ban_tags",
                    multiline=True,
                    default="",
                    tooltip="Comma-separated tags TIPO must not add (your own tags are never removed). Whole tags, "
                    "case and _ ignored; * is a wildcard (*text*).",
                ),
                *([_model_input(None, False)] if flat else []),
                _format(),
                io.Combo.Input("tag_length", options=list(core.LENGTHS), default=d.tag_length, tooltip="How many tags to reach: very_short 6-18, short 18-36, long 36-54, very_long 54-72."),
                io.Combo.Input("nl_length", options=list(core.LENGTHS), default=d.nl_length, tooltip="How much natural language: very_short 1-2 sentences, short 2-4, long 4-8, very_long 8+."),
                io.Int.Input("width", default=d.width, min=64, max=16384, step=8, tooltip="Image width; TIPO is told the aspect ratio."),
                io.Int.Input("height", default=d.height, min=64, max=16384, step=8, tooltip="Image height; TIPO is told the aspect ratio."),
                io.Float.Input("temperature", **ADVANCED, default=d.temperature, min=0.01, max=2.0, step=0.01, tooltip="Sampling temperature: higher is more varied."),
                io.Float.Input("top_p", **ADVANCED, default=d.top_p, min=0.01, max=1.0, step=0.01, tooltip="Nucleus sampling: keep the most likely tokens up to this probability mass."),
                io.Int.Input("top_k", **ADVANCED, default=d.top_k, min=0, max=1000, tooltip="Sample among the k most likely tokens (0: no limit)."),
                io.Float.Input("min_p", **ADVANCED, default=d.min_p, min=0.0, max=0.99, step=0.01, tooltip="Drop tokens less likely than min_p times the most likely one (0: off)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="The same seed, inputs and model give the same prompt."),
                *([_device_input(None, False)] if flat else []),
                io.Int.Input("max_retry", **ADVANCED, default=d.max_retry, min=0, max=10, tooltip="Extra passes when TIPO writes less than the length target; each continues the previous one."),
                io.Int.Input("max_new_tokens", **ADVANCED, default=d.max_new_tokens, min=16, max=2048, step=16, tooltip="Most tokens TIPO writes per pass."),
                io.Boolean.Input("length_check", **ADVANCED, default=True, tooltip="Stop with an error when the length target is still missed after the retries. Off: use what TIPO wrote."),
                _escape(),
                # last and optional: workflows saved before keep their widget positions and validate unchanged
                _precision_input(True) if flat else _backend_input(),
            ],
            outputs=_outputs(),
            **({} if flat else {"accept_all_inputs": True}),  # flat model/device/precision of older prompts
        )

    @classmethod
    def validate_inputs(cls, backend=None, model=None, device=None, precision=None, format=None, **values) -> bool | str:
        """A missing model, a backend/model mismatch, a template typo or a bad option or number is reported before
        the graph runs (the messages running it would give).

        Takes every input (``**values``): only then does ComfyUI pass the DynamicCombo's nested values, and it then
        leaves the options and ranges of all inputs to this check (as it does on hosts that do not check V3 combos).
        """
        try:
            kind, name, _ = _choose(backend, model, device, precision)
            if name is not None:
                found = _models()
                if name not in found:
                    shown = ", ".join(_model_names(kind))
                    return f"TIPO model '{name}' is not in {', '.join(_folders())}; pick one of: {shown}"
                _check_kind(kind, name, found[name])
        except core.TipoError as exc:
            return str(exc)
        for check in (lambda: _check_format(format), lambda: check_ranges(cls, **values), lambda: check_options(cls, backend=backend, **values)):
            result = check()
            if result is not True:
                return result
        return True

    @classmethod
    def execute(cls, tags, nl_prompt, ban_tags, format, tag_length, nl_length, width, height, temperature, top_p, top_k,
                min_p, seed, max_retry, max_new_tokens, length_check, escape_brackets, backend=None, model=None,
                device=None, precision=None, **_unknown) -> io.NodeOutput:  # fmt: skip
        # (with accept_all_inputs an input this node does not know arrives too; ignored, as ComfyUI does elsewhere)
        kind, name, values = _choose(backend, model, device, precision)
        if name is None:  # nothing chose one: the backend's first model, as its combo's default
            name = _model_names(kind)[0]
            kind, name, values = _choose(kind, name, values["device"], values["precision"])
        path = core.resolve_model(name, _folders())
        kind = _check_kind(kind, name, path)
        dev = comfy.model_management.get_torch_device() if values["device"] == "auto" else torch.device("cpu")
        offload = comfy.model_management.text_encoder_offload_device() if dev.type != "cpu" and kind == "transformers" else None
        dtype = None if values["precision"] == "auto" or kind == "gguf" else values["precision"]
        backend = core.load_tipo(path, device=dev, dtype=dtype, offload_device=offload)
        settings = core.TipoSettings(
            tag_length=tag_length,
            nl_length=nl_length,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            max_new_tokens=max_new_tokens,
            max_retry=max_retry,
            width=width,
            height=height,
            ban_tags=ban_tags,
            require_length=length_check,
        )
        result = core.expand(
            backend,
            tags,
            nl_prompt,
            seed=seed,
            settings=settings,
            template=format,
            escape=escape_brackets,
            on_step=comfy.model_management.throw_exception_if_processing_interrupted,
        )
        return io.NodeOutput(result.prompt, result.prompt_unescaped, _categories_json(result.categories))


class HDMPromptFormat(io.ComfyNode):
    """Sort a prompt into HDM's layout and escape it, without a model."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMPromptFormat",
            display_name="HDM Prompt Format",
            description=(
                "Reorders danbooru tags into HDM's layout (special, characters, copyrights, artist, general, natural "
                "language, then quality / rating / meta) and escapes brackets for ComfyUI. No model needed."
            ),
            search_aliases=["tag order", "danbooru tags", "escape brackets", "anime prompt"],
            inputs=[_tags(), _nl(), _format(), _escape()],
            outputs=_outputs(),
        )

    @classmethod
    def validate_inputs(cls, format=None) -> bool | str:
        return _check_format(format)

    @classmethod
    def execute(cls, tags, nl_prompt, format, escape_brackets) -> io.NodeOutput:
        result = core.format_only(tags, nl_prompt, template=format, escape=escape_brackets)
        return io.NodeOutput(result.prompt, result.prompt_unescaped, _categories_json(result.categories))
