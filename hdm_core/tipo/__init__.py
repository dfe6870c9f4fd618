"""TIPO prompt expansion for HDM: danbooru tags + natural language in, HDM-layout prompt out.

TIPO (KBlueLeaf's "Text to Image with text Presampling for Optimal prompting") is a small
LLaMA that extends a prompt; HDM's model card recommends it. This package runs it from local
model files only, with tipo-kgen (imported on first use) for TIPO's prompt format and tag lists::

    from hdm_core import tipo
    backend = tipo.load_tipo("models/tipo/TIPO-200M-ft2")            # or a .gguf file
    result = tipo.expand(backend, "1girl, izuna (blue archive)", "", seed=1)
    result.prompt            # escaped for ComfyUI: izuna \\(blue archive\\) ...
    result.prompt_unescaped  # the same, plain
    result.categories        # {"characters": [...], "general": [...], "extended": "...", ...}

    tipo.format_only("smile, izuna (blue archive), 1girl")   # layout + escaping, no model
    tipo.expand_prompt(tags, nl, model="TIPO-200M-ft2", model_dirs=["models/tipo"], seed=1)

Importing this package imports neither tipo-kgen nor transformers nor llama-cpp-python.
"""

from .errors import TipoDependencyError, TipoError, TipoLengthError, TipoModelError
from .loader import clear_cache, find_models, load_tipo, model_kind, no_model_message, resolve_device, resolve_dtype, resolve_model
from .prompt import HDM_TEMPLATE, NL_CATEGORIES, PLACEHOLDERS, TAG_CATEGORIES, check_template, render_template
from .runner import LENGTHS, TipoPass, TipoResult, TipoSettings, expand, expand_prompt, format_only

__all__ = [
    "HDM_TEMPLATE",
    "LENGTHS",
    "NL_CATEGORIES",
    "PLACEHOLDERS",
    "TAG_CATEGORIES",
    "TipoDependencyError",
    "TipoError",
    "TipoLengthError",
    "TipoModelError",
    "TipoPass",
    "TipoResult",
    "TipoSettings",
    "check_template",
    "clear_cache",
    "expand",
    "expand_prompt",
    "find_models",
    "format_only",
    "load_tipo",
    "model_kind",
    "no_model_message",
    "render_template",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]
