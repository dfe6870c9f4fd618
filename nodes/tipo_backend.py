"""HDM TIPO Prompt's model inputs: ``model``, ``device``, ``precision`` and the ``backend`` that groups them.

Two layouts of the same inputs, chosen by the host (``v3.DYNAMIC_INPUTS``), as HDM Train
LyCORIS's ``algorithm`` does (see ``train_algorithm``):

* **flat** (ComfyUI without DynamicCombo, e.g. 0.3.64): ``model`` (folders and .gguf files in one
  list) and ``device`` where every release so far had them, and ``precision`` appended last
  (optional, so workflows saved before it keep their ``widgets_values`` positions and validate).
* **dynamic** (v0.33): ``model`` and ``device`` leave the main list; an optional DynamicCombo
  ``backend`` (transformers | gguf), last, shows only the chosen backend's ``model`` list,
  ``device`` and (transformers) ``precision``. ComfyUI passes them nested
  (``backend={"backend": "gguf", "model": ..., "device": ...}``). They are all optional and the
  node accepts all inputs, so an API prompt saved in the flat layout (``"model": ...``, no
  backend) still validates and runs, the backend following its model file.

UI workflows saved in the flat layout are rewritten into the dynamic one on load by
web/hdm_dynamic_combo.js (web/hdm_saved_layouts.js holds the flat layout's widget order).

TIPO models live in ``models/tipo`` (registered here as the ``tipo`` model folder, so
``extra_model_paths.yaml`` can add more).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import folder_paths

from ..hdm_core import tipo as core
from .v3 import ADVANCED, dynamic_choice, io

__all__ = [
    "BACKENDS", "DEVICES", "FOLDER", "NO_MODEL", "NO_MODEL_OF", "PRECISIONS", "backend_input",
    "check_model", "choose", "device_input", "folders", "model_input", "model_names", "models", "precision_input",
    "resolve",
]  # fmt: skip

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
#: What an input takes when the prompt gives it neither flat nor nested (model: the backend's first one).
_DEFAULTS: dict[str, Any] = {"model": None, "device": "auto", "precision": "auto"}

folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


# ----------------------------------------------------------------------------- models found


def folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def models(kind: str | None = None, found: dict[str, Path] | None = None) -> dict[str, Path]:
    """``{name: path}`` of the TIPO models found (or of ``found``, one scan shared), all of them or one backend's."""
    found = core.find_models(folders()) if found is None else found
    return {n: p for n, p in found.items() if kind is None or core.model_kind(p) == kind}


def model_names(kind: str | None = None, found: dict[str, Path] | None = None) -> list[str]:
    """A model combo's options: the models found (of ``kind``), else its placeholder."""
    return list(models(kind, found)) or [NO_MODEL_OF[kind] if kind else NO_MODEL]


# ----------------------------------------------------------------------------- the inputs

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


def model_input(kind: str | None = None, nested: bool = False, found: dict[str, Path] | None = None) -> io.Input:
    """The model combo: every model (flat layout, ``kind`` None) or one backend's (nested, optional)."""
    extra = {"optional": True} if nested else {}
    return io.Combo.Input("model", options=model_names(kind, found), tooltip=_MODEL_TOOLTIP[kind], **extra)


def device_input(kind: str | None = None, nested: bool = False) -> io.Input:
    extra = {"optional": True} if nested else {}
    return io.Combo.Input("device", **ADVANCED, options=DEVICES, default="auto", tooltip=_DEVICE_TOOLTIP[kind], **extra)


def precision_input(flat: bool) -> io.Input:
    """Optional in both layouts: last on the flat one (saved workflows without it keep working)."""
    tip = _PRECISION_TOOLTIP + (" Ignored for a .gguf file (its precision is in the file)." if flat else "")
    return io.Combo.Input("precision", **ADVANCED, options=PRECISIONS, default="auto", optional=True, tooltip=tip)


def backend_input() -> io.Input:
    """The DynamicCombo: each backend with only its own inputs, all optional so flat prompts still validate.

    The first option is the default: transformers, unless only .gguf models are there.
    """
    found = models()  # one scan of the model folders for both lists
    options = {
        "transformers": [model_input("transformers", True, found), device_input("transformers", True), precision_input(False)],
        "gguf": [model_input("gguf", True, found), device_input("gguf", True)],
    }
    order = ["gguf", "transformers"] if models("gguf", found) and not models("transformers", found) else list(BACKENDS)
    return io.DynamicCombo.Input(
        "backend", optional=True, tooltip=_BACKEND_TOOLTIP, options=[io.DynamicCombo.Option(k, options[k]) for k in order]
    )


# ----------------------------------------------------------------------------- reading and checking


def _no_model_message(kind: str | None) -> str:
    """Why a placeholder cannot run: no model at all (where to get one), or none for this backend."""
    found = models()
    if not found:
        return core.no_model_message(folders())
    if kind is None:
        return f"No TIPO model is chosen (the list was empty when this was saved); pick one of: {', '.join(found)}"
    other = next(b for b in BACKENDS if b != kind)
    source = core.loader.MODEL_SOURCE
    get = (f"put a TIPO model folder there (config.json, model.safetensors, tokenizer.model and the tokenizer configs from {source})"
           if kind == "transformers" else f"put a .gguf TIPO model there (e.g. TIPO-200M-ft2-F16.gguf from {source}; needs llama-cpp-python)")  # fmt: skip
    return (f"HDM TIPO Prompt: backend '{kind}' has no model: no {_KIND_NAME[kind][2:]} in {', '.join(folders())}. Choose "
            f"backend '{other}' for the model(s) there ({', '.join(found)}), or {get}.")  # fmt: skip


def choose(backend: Any, model: Any, device: Any, precision: Any) -> tuple[str | None, Any, dict[str, Any]]:
    """``(backend or None, model name, {"device", "precision"})`` from either layout; raises ``TipoModelError``.

    ``backend`` is the DynamicCombo's nested dict, a backend name, or ``None`` (a flat prompt:
    the backend then follows the model file, as before the choice existed). The flat
    ``model``/``device``/``precision`` (older prompts, or the flat host) win over nested ones
    (``v3.dynamic_choice``). Checks the options and the "no model" placeholders; the model name
    itself is left to :func:`check_model` / :func:`resolve` (``None``: linked, known only at run time).
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


def check_model(kind: str | None, name: Any) -> None:
    """For ``validate_inputs``: the name must be a model listed (of the chosen backend); ``None`` (linked) passes."""
    if name is None:
        return
    found = models()
    if name not in found:
        raise core.TipoModelError(f"TIPO model '{name}' is not in {', '.join(folders())}; pick one of: {', '.join(model_names(kind))}")
    _check_kind(kind, name, found[name])


def resolve(backend: Any, model: Any, device: Any, precision: Any) -> tuple[str, Path, str, str]:
    """``(backend, model path, device, precision)`` to run with, from either layout; raises ``TipoModelError``.

    A model nothing chose is the backend's first (its combo's default). A model name that is not
    listed may still be a path (``core.resolve_model``, with its messages).
    """
    kind, name, values = choose(backend, model, device, precision)
    if name is None:
        kind, name, values = choose(kind, model_names(kind)[0], values["device"], values["precision"])
    path = core.resolve_model(name, folders())
    return _check_kind(kind, name, path), path, values["device"], values["precision"]
