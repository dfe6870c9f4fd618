"""ComfyUI nodes for TIPO prompt expansion and HDM's prompt layout (thin adapters over ``hdm_core.tipo``).

TIPO models live in ``models/tipo`` (registered here as the ``tipo`` model folder, so
``extra_model_paths.yaml`` can add more): transformers folders, or ``.gguf`` files when
llama-cpp-python works. Nothing is downloaded or installed; tipo-kgen is imported only when a
node runs, so a missing or broken optional package cannot break ComfyUI's start.
"""

from __future__ import annotations

import json
import os

import torch

import comfy.model_management
import folder_paths

from ..hdm_core import tipo as core

FOLDER = "tipo"
NO_MODEL = "(no TIPO model in models/tipo)"

folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def _folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def _model_names() -> list[str]:
    return list(core.find_models(_folders())) or [NO_MODEL]


_OUTPUTS = ("STRING", "STRING", "STRING")
_OUTPUT_NAMES = ("prompt", "prompt_unescaped", "categories")
_OUTPUT_TOOLTIPS = (
    "The prompt in HDM's layout, with literal brackets escaped as \\( \\) so ComfyUI's text encoders do not read "
    "them as weights (unless escape_brackets is off). Feed it to a text encode node.",
    "The same prompt without escapes, for tools that do not read ComfyUI's weight syntax.",
    "JSON: the tags per category (special, characters, copyrights, artist, general, quality, rating, meta) and the "
    "natural language (extended, generated), unescaped.",
)
_TAGS = (
    "STRING",
    {
        "multiline": True,
        "default": "",
        "tooltip": "Danbooru tags, comma-separated. Brackets in tag names are literal: izuna (blue archive) and "
        "izuna \\(blue archive\\) are the same tag. (tag:1.2) keeps its weight; BREAK stays after the tag before it.",
    },
)
_NL = (
    "STRING",
    {"multiline": True, "default": "", "tooltip": "Natural-language description. Brackets are literal; (word:1.2) keeps its weight."},
)
_FORMAT = (
    "STRING",
    {
        "multiline": True,
        "default": core.HDM_TEMPLATE,
        "tooltip": "Output layout. Placeholders: <|special|> <|characters|> <|copyrights|> <|artist|> <|general|> "
        "<|extended|> (your natural language, extended; TIPO's own text when you gave none) <|generated|> <|quality|> "
        "<|rating|> <|meta|>. Empty parts disappear with the comma or period after them. Default: HDM's layout.",
    },
)
_ESCAPE = (
    "BOOLEAN",
    {"default": True, "tooltip": "Escape literal brackets as \\( \\) for ComfyUI's prompt weights. Off: plain brackets."},
)


def _categories_json(categories: dict) -> str:
    return json.dumps(categories, ensure_ascii=False, indent=1)


class HDMTipoPrompt:
    """Expand a prompt with a local TIPO model into HDM's layout."""

    CATEGORY = "HDM"
    FUNCTION = "expand"
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    OUTPUT_TOOLTIPS = _OUTPUT_TOOLTIPS
    DESCRIPTION = (
        "TIPO prompt expansion: adds danbooru tags and natural language to your prompt with a small local language "
        "model (models/tipo), sorts everything into HDM's layout and escapes brackets for ComfyUI. The same seed "
        "gives the same prompt."
    )

    @classmethod
    def INPUT_TYPES(cls):
        d = core.TipoSettings()
        return {
            "required": {
                "tags": _TAGS,
                "nl_prompt": _NL,
                "ban_tags": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "Comma-separated tags TIPO must not add (your own tags are never removed). Whole tags, "
                        "case and _ ignored; * is a wildcard (*text*).",
                    },
                ),
                "model": (
                    _model_names(),
                    {
                        "tooltip": "TIPO model from models/tipo: a folder with config.json, model.safetensors, "
                        "tokenizer.model and the tokenizer configs (e.g. KBlueLeaf/TIPO-200M-ft2), or a .gguf file "
                        "(needs llama-cpp-python)."
                    },
                ),
                "format": _FORMAT,
                "tag_length": (list(core.LENGTHS), {"default": d.tag_length, "tooltip": "How many tags to reach: very_short 6-18, short 18-36, long 36-54, very_long 54-72."}),
                "nl_length": (list(core.LENGTHS), {"default": d.nl_length, "tooltip": "How much natural language: very_short 1-2 sentences, short 2-4, long 4-8, very_long 8+."}),
                "width": ("INT", {"default": d.width, "min": 64, "max": 16384, "step": 8, "tooltip": "Image width; TIPO is told the aspect ratio."}),
                "height": ("INT", {"default": d.height, "min": 64, "max": 16384, "step": 8, "tooltip": "Image height; TIPO is told the aspect ratio."}),
                "temperature": ("FLOAT", {"default": d.temperature, "min": 0.01, "max": 2.0, "step": 0.01, "tooltip": "Sampling temperature: higher is more varied."}),
                "top_p": ("FLOAT", {"default": d.top_p, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "Nucleus sampling: keep the most likely tokens up to this probability mass."}),
                "top_k": ("INT", {"default": d.top_k, "min": 0, "max": 1000, "tooltip": "Sample among the k most likely tokens (0: no limit)."}),
                "min_p": ("FLOAT", {"default": d.min_p, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": "Drop tokens less likely than min_p times the most likely one (0: off)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "The same seed, inputs and model give the same prompt."}),
                "device": (["auto", "cpu"], {"default": "auto", "tooltip": "auto: ComfyUI's device (GPU in fp16, parked on the CPU between runs); cpu: fp32 on the CPU."}),
                "max_retry": ("INT", {"default": d.max_retry, "min": 0, "max": 10, "tooltip": "Extra passes when TIPO writes less than the length target; each continues the previous one."}),
                "max_new_tokens": ("INT", {"default": d.max_new_tokens, "min": 16, "max": 2048, "step": 16, "tooltip": "Most tokens TIPO writes per pass."}),
                "length_check": ("BOOLEAN", {"default": True, "tooltip": "Stop with an error when the length target is still missed after the retries. Off: use what TIPO wrote."}),
                "escape_brackets": _ESCAPE,
            }
        }

    def expand(self, tags, nl_prompt, ban_tags, model, format, tag_length, nl_length, width, height, temperature, top_p, top_k, min_p, seed, device, max_retry, max_new_tokens, length_check, escape_brackets):
        if model == NO_MODEL:
            raise core.TipoModelError(core.no_model_message(_folders()))
        path = core.resolve_model(model, _folders())
        dev = comfy.model_management.get_torch_device() if device == "auto" else torch.device("cpu")
        offload = comfy.model_management.text_encoder_offload_device() if dev.type != "cpu" else None
        backend = core.load_tipo(path, device=dev, offload_device=offload)
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
        return (result.prompt, result.prompt_unescaped, _categories_json(result.categories))


class HDMPromptFormat:
    """Sort a prompt into HDM's layout and escape it, without a model."""

    CATEGORY = "HDM"
    FUNCTION = "format"
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    OUTPUT_TOOLTIPS = _OUTPUT_TOOLTIPS
    DESCRIPTION = (
        "Reorders danbooru tags into HDM's layout (special, characters, copyrights, artist, general, natural "
        "language, then quality / rating / meta) and escapes brackets for ComfyUI. No model needed."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tags": _TAGS, "nl_prompt": _NL, "format": _FORMAT, "escape_brackets": _ESCAPE}}

    def format(self, tags, nl_prompt, format, escape_brackets):
        result = core.format_only(tags, nl_prompt, template=format, escape=escape_brackets)
        return (result.prompt, result.prompt_unescaped, _categories_json(result.categories))


NODE_CLASS_MAPPINGS = {"HDMTipoPrompt": HDMTipoPrompt, "HDMPromptFormat": HDMPromptFormat}
NODE_DISPLAY_NAME_MAPPINGS = {"HDMTipoPrompt": "HDM TIPO Prompt", "HDMPromptFormat": "HDM Prompt Format"}
