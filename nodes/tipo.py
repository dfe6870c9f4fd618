"""ComfyUI nodes for TIPO prompt expansion and HDM's prompt layout (thin adapters over ``hdm_core.tipo``).

TIPO models live in ``models/tipo`` (the ``tipo`` model folder, so ``extra_model_paths.yaml`` can
add more): transformers folders, or ``.gguf`` files when llama-cpp-python works. Nothing is downloaded or installed; tipo-kgen is imported only when a
node runs, so a missing or broken optional package cannot break ComfyUI's start.

HDM TIPO Prompt's model inputs (``model``, ``device``, ``precision``, and ``backend`` where ComfyUI has
DynamicCombo) and the ``models/tipo`` folder are in ``tipo_backend``.
"""

from __future__ import annotations

import json

import torch

import comfy.model_management

from ..hdm_core import tipo as core
from . import tipo_backend as tb
from .v3 import ADVANCED, DYNAMIC_INPUTS, check_inputs, io, schema

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
                *([tb.model_input()] if flat else []),
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
                *([tb.device_input()] if flat else []),
                io.Int.Input("max_retry", **ADVANCED, default=d.max_retry, min=0, max=10, tooltip="Extra passes when TIPO writes less than the length target; each continues the previous one."),
                io.Int.Input("max_new_tokens", **ADVANCED, default=d.max_new_tokens, min=16, max=2048, step=16, tooltip="Most tokens TIPO writes per pass."),
                io.Boolean.Input("length_check", **ADVANCED, default=True, tooltip="Stop with an error when the length target is still missed after the retries. Off: use what TIPO wrote."),
                _escape(),
                # last and optional: workflows saved before keep their widget positions and validate unchanged
                tb.precision_input(flat=True) if flat else tb.backend_input(),
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
            kind, name, _ = tb.choose(backend, model, device, precision)
            tb.check_model(kind, name)
        except core.TipoError as exc:
            return str(exc)
        checked = _check_format(format)
        return checked if checked is not True else check_inputs(cls, backend=backend, **values)

    @classmethod
    def execute(cls, tags, nl_prompt, ban_tags, format, tag_length, nl_length, width, height, temperature, top_p, top_k,
                min_p, seed, max_retry, max_new_tokens, length_check, escape_brackets, backend=None, model=None,
                device=None, precision=None, **_unknown) -> io.NodeOutput:  # fmt: skip
        # (with accept_all_inputs an input this node does not know arrives too; ignored, as ComfyUI does elsewhere)
        kind, path, device, precision = tb.resolve(backend, model, device, precision)
        dev = comfy.model_management.get_torch_device() if device == "auto" else torch.device("cpu")
        offload = comfy.model_management.text_encoder_offload_device() if dev.type != "cpu" and kind == "transformers" else None
        dtype = None if precision == "auto" or kind == "gguf" else precision
        runner = core.load_tipo(path, device=dev, dtype=dtype, offload_device=offload)
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
            runner,
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
