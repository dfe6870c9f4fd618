"""HDM TIPO Prompt's model inputs in a real ComfyUI (the test harness): a ``backend`` DynamicCombo
that shows only the chosen backend's options where ComfyUI has one (v0.33), the flat inputs
plus ``precision`` elsewhere (0.3.64), and API prompts saved in the flat layout working on both.

See the module docstring of nodes/tipo_backend.py. The models: the tiny random TIPO folder from
``conftest.py`` (copied into a models/tipo folder of this module) and a ``.gguf`` file run
by a stand-in llama_cpp. Run with ``COMFYUI_PATH=~/ComfyUI-0.3.64`` for the old host.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import types

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py

GGUF = "tiny.gguf"
FOLDER = "tiny-tipo"
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
#: today's order with model and device taken out (the dynamic layout's required inputs)
DYNAMIC_REQUIRED = [
    "tags", "nl_prompt", "ban_tags", "format", "tag_length", "nl_length", "width", "height", "temperature", "top_p",
    "top_k", "min_p", "seed", "max_retry", "max_new_tokens", "length_check", "escape_brackets",
]  # fmt: skip


def node(cui):
    return cui.nodes.NODE_CLASS_MAPPINGS["HDMTipoPrompt"]


def pack(cui):
    """The pack's nodes.tipo module (the one ComfyUI registered last: tests may load the pack twice)."""
    return sys.modules[node(cui).__module__]


def dynamic(cui) -> bool:
    return bool(H.dynamic_combos(node(cui)))


@pytest.fixture(scope="module")
def roots(cui, tiny_tipo_dir, tmp_path_factory):
    """Model folders: ``both`` (the tiny TIPO folder and a .gguf file), ``gguf`` (only the file), ``none``."""
    base = tmp_path_factory.mktemp("tipo-roots")
    both, gguf, none = base / "both", base / "gguf", base / "none"
    for root in (both, gguf, none):
        root.mkdir()
    shutil.copytree(tiny_tipo_dir, both / FOLDER)
    for root in (both, gguf):
        (root / GGUF).write_bytes(b"GGUF")  # loaded only by the stand-in llama_cpp
    return types.SimpleNamespace(both=both, gguf=gguf, none=none)


@contextlib.contextmanager
def folders(cui, *paths):
    """The tipo model folders are exactly ``paths`` for a while (the node lists models when asked)."""
    listed = cui.folder_paths.folder_names_and_paths["tipo"][0]
    saved = list(listed)
    listed[:] = [str(p) for p in paths]
    try:
        yield
    finally:
        listed[:] = saved
        pack(cui).core.clear_cache()


@pytest.fixture
def both(cui, roots):
    with folders(cui, roots.both):
        yield roots.both


@pytest.fixture
def fake_llama(cui, monkeypatch):
    """A stand-in llama_cpp for the pack's loader: records its Llama arguments, writes canned tags."""
    made = []

    class Llama:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            made.append(kwargs)

        def create_completion(self, prompt, **kwargs):
            for criterion in kwargs["stopping_criteria"] or []:
                criterion([1, 2], None)
            return {"choices": [{"text": ", solo, glasses, halo, smile, fox ears"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}

    fake = types.SimpleNamespace(Llama=Llama, StoppingCriteriaList=list)
    monkeypatch.setattr(pack(cui).core.loader, "llama_cpp", lambda: (fake, ""))
    return made


def flat_inputs(**overrides) -> dict:
    """An API prompt's inputs in the flat layout (every release before the backend choice saved these)."""
    inputs = {
        "tags": "1girl, izuna (blue archive)", "nl_prompt": "", "ban_tags": "", "model": FOLDER,
        "format": "<|special|>, <|characters|>, <|general|>, <|extended|>.", "tag_length": "very_short",
        "nl_length": "very_short", "width": 1024, "height": 768, "temperature": 0.5, "top_p": 0.95, "top_k": 80,
        "min_p": 0.05, "seed": 7, "device": "cpu", "max_retry": 0, "max_new_tokens": 16, "length_check": False,
        "escape_brackets": True,
    }  # fmt: skip
    inputs.update(overrides)
    return inputs


def nested_inputs(backend: str, **values) -> dict:
    """The same prompt as the frontend queues it with the DynamicCombo (``backend.model`` …)."""
    inputs = {k: v for k, v in flat_inputs().items() if k not in ("model", "device")}
    inputs["backend"] = backend
    inputs.update({f"backend.{k}": v for k, v in values.items()})
    return inputs


def tipo_prompt(inputs: dict) -> dict:
    return {"8": {"class_type": "HDMTipoPrompt", "inputs": inputs}}  # H.validation_errors reads node "8"


def run_text(cui, inputs: dict) -> str:
    result = cui.run(tipo_prompt(inputs), {"text": ("8", 0)})
    assert result.ok, result.error() or result.validation
    return result.outputs["text"]


def loaded(cui):
    """The TIPO backend the node loaded last (the loader keeps one)."""
    (backend,) = pack(cui).core.loader._cache.values()
    return backend


# ----------------------------------------------------------------------------- the schema


def test_the_flat_layout_is_todays_with_precision_last(cui, both):
    if dynamic(cui):
        pytest.skip("this ComfyUI has DynamicCombo: see the dynamic layout's test")
    spec = node(cui).INPUT_TYPES()
    assert H.widget_names(spec) == H.saved_layouts_js([])["LEGACY_WIDGETS"]["HDMTipoPrompt"]  # (web/hdm_saved_layouts.js)
    assert H.widget_names(spec)[-1] == "precision"
    assert list(spec["optional"]) == ["precision"]  # optional: workflows saved without it validate (default auto)
    precision = spec["optional"]["precision"]
    assert H.combo_options(precision) == PRECISIONS and precision[1]["default"] == "auto"
    assert "fp32 on the CPU" in precision[1]["tooltip"] and "Ignored for a .gguf file" in precision[1]["tooltip"]
    assert precision[1].get("advanced", False) == bool(pack(cui).ADVANCED)  # drawn on request where the host has the flag
    assert H.combo_options(spec["required"]["model"]) == [FOLDER, GGUF]  # folders and .gguf files in one list
    assert H.combo_options(spec["required"]["device"]) == ["auto", "cpu"]


def backend_options(cui) -> dict:
    backend = node(cui).INPUT_TYPES()["optional"]["backend"]
    assert backend[0] == "COMFY_DYNAMICCOMBO_V3" and backend[1]["tooltip"]
    return {o["key"]: o["inputs"] for o in backend[1]["options"]}


def test_the_dynamic_layout_shows_each_backends_own_inputs(cui, roots, both):
    if not dynamic(cui):
        pytest.skip("this ComfyUI has no DynamicCombo")
    spec = node(cui).INPUT_TYPES()
    assert list(spec["required"]) == DYNAMIC_REQUIRED
    assert list(spec["optional"]) == ["backend"]
    options = backend_options(cui)
    assert list(options) == ["transformers", "gguf"]  # the first is the default
    for key, inputs in options.items():
        assert not inputs.get("required"), key  # optional: prompts in the flat layout still validate
        for name, d in inputs["optional"].items():
            assert d[1]["tooltip"], (key, name)
    transformers, gguf = options["transformers"]["optional"], options["gguf"]["optional"]
    assert list(transformers) == ["model", "device", "precision"] and list(gguf) == ["model", "device"]
    assert H.combo_options(transformers["model"]) == [FOLDER] and H.combo_options(gguf["model"]) == [GGUF]
    assert H.combo_options(transformers["device"]) == H.combo_options(gguf["device"]) == ["auto", "cpu"]
    assert H.combo_options(transformers["precision"]) == PRECISIONS and transformers["precision"][1]["default"] == "auto"
    assert "GPU" in gguf["device"][1]["tooltip"] and "llama-cpp-python" in gguf["model"][1]["tooltip"]

    with folders(cui, roots.gguf):  # only .gguf files: gguf comes first (the default), the folder list says why it is empty
        options = backend_options(cui)
        assert list(options) == ["gguf", "transformers"]
        assert H.combo_options(options["transformers"]["optional"]["model"]) == ["(no TIPO model folder in models/tipo)"]
    with folders(cui, roots.none):
        options = backend_options(cui)
        assert list(options) == ["transformers", "gguf"]
        assert H.combo_options(options["gguf"]["optional"]["model"]) == ["(no .gguf TIPO model in models/tipo)"]


# ----------------------------------------------------------------------------- running


def test_a_flat_prompt_gives_the_same_prompt_as_the_nested_form(cui, both):
    """An API prompt saved with model/device as plain inputs and no backend runs on every host; on a
    DynamicCombo host the nested form (backend.model …) gives the very same prompt."""
    flat = run_text(cui, flat_inputs())
    assert flat.startswith("1girl, izuna \\(blue archive\\)") and loaded(cui).kind == "transformers"
    assert run_text(cui, flat_inputs(seed=8)) != flat  # (the seed matters, so equal texts below mean equal runs)
    if dynamic(cui):
        assert run_text(cui, nested_inputs("transformers", model=FOLDER, device="cpu", precision="auto")) == flat
        assert run_text(cui, nested_inputs("transformers")) == flat  # nothing nested given: the defaults (the first model, auto: the CPU here)


def test_precision_reaches_the_loader(cui, both):
    """bf16 loads the folder's weights in bf16 (flat precision on every host, nested on v0.33); auto is fp32 on the CPU."""
    run_text(cui, flat_inputs())
    assert loaded(cui).model.dtype == torch.float32
    run_text(cui, flat_inputs(precision="bf16"))
    assert loaded(cui).model.dtype == torch.bfloat16
    if dynamic(cui):
        run_text(cui, nested_inputs("transformers", model=FOLDER, device="cpu", precision="fp32"))
        assert loaded(cui).model.dtype == torch.float32
        run_text(cui, nested_inputs("transformers", model=FOLDER, device="cpu", precision="bf16"))
        assert loaded(cui).model.dtype == torch.bfloat16


def test_a_gguf_model_runs_through_llama_cpp_in_either_layout(cui, both, fake_llama):
    flat = run_text(cui, flat_inputs(model=GGUF, device="auto", precision="bf16"))  # (precision: ignored for .gguf)
    assert "solo" in flat and loaded(cui).kind == "gguf"
    assert fake_llama[-1]["n_gpu_layers"] == 0  # auto on a CPU-only ComfyUI: no layer on a GPU
    if dynamic(cui):
        assert run_text(cui, nested_inputs("gguf", model=GGUF, device="auto")) == flat


def test_a_backend_that_does_not_fit_the_model_is_a_clear_error(cui, both):
    message = "HDM TIPO Prompt: backend 'gguf' is chosen, but TIPO model 'tiny-tipo' is a transformers model folder (backend 'transformers'); choose backend 'transformers' for it, or a .gguf file as the model"
    with pytest.raises(Exception) as err:
        H.execute_node(node(cui), **flat_inputs(backend={"backend": "gguf", "device": "cpu"}))
    assert str(err.value) == message
    if dynamic(cui):  # a flat model beside a chosen backend, as a hand-edited prompt may have it: refused when queued
        errors = H.validation_errors(cui, tipo_prompt(nested_inputs("gguf", device="cpu") | {"model": FOLDER}))
        assert errors and all(message in e for e in errors), errors


# ----------------------------------------------------------------------------- refused when queued


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"model": "TIPO-gone"}, "TIPO model 'TIPO-gone' is not in "),
        ({"device": "cuda"}, "HDM TIPO Prompt: device 'cuda' is not one of the options (auto, cpu)"),
        ({"precision": "fp8"}, "HDM TIPO Prompt: precision 'fp8' is not one of the options (auto, fp32, bf16, fp16)"),
        ({"tag_length": "huge"}, "HDM TIPO Prompt: tag_length 'huge' is not one of the options (very_short, short, long, very_long)"),
        ({"nl_length": "tiny"}, "HDM TIPO Prompt: nl_length 'tiny' is not one of the options"),
        ({"width": 8}, "HDM TIPO Prompt: width 8 must be a whole number from 64 to 16384"),
        ({"format": "<|tags|>"}, "unknown placeholder(s) in the format template: <|tags|>"),
    ],
)  # fmt: skip
def test_bad_flat_inputs_are_refused_when_queued_on_every_host(cui, both, edit, message):
    errors = H.validation_errors(cui, tipo_prompt(flat_inputs(**edit)))
    assert errors and all(message in e for e in errors), errors


def test_a_good_prompt_validates_in_either_layout(cui, both):
    assert H.validation_errors(cui, tipo_prompt(flat_inputs())) == []
    if dynamic(cui):
        assert H.validation_errors(cui, tipo_prompt(nested_inputs("gguf", model=GGUF, device="auto"))) == []


@pytest.mark.parametrize(
    "backend, values, message",
    [
        ("transformers", {"model": "TIPO-gone"}, "TIPO model 'TIPO-gone' is not in "),
        ("gguf", {"model": FOLDER}, "HDM TIPO Prompt: backend 'gguf' is chosen, but TIPO model 'tiny-tipo' is a transformers model folder"),
        ("transformers", {"model": FOLDER, "device": "cuda"}, "HDM TIPO Prompt: device 'cuda' is not one of the options (auto, cpu)"),
        ("transformers", {"model": FOLDER, "precision": "fp8"}, "HDM TIPO Prompt: precision 'fp8' is not one of the options"),
        ("onnx", {}, "HDM TIPO Prompt: backend 'onnx' is not one of the options (transformers, gguf)"),
    ],
)  # fmt: skip
def test_bad_nested_inputs_are_refused_when_queued(cui, both, backend, values, message):
    if not dynamic(cui):
        pytest.skip("this ComfyUI has no DynamicCombo")
    errors = H.validation_errors(cui, tipo_prompt(nested_inputs(backend, **values)))
    assert errors and all(message in e for e in errors), errors


def test_a_no_model_placeholder_is_refused_when_queued_with_where_to_get_one(cui, roots):
    with folders(cui, roots.none):  # nothing at all: where to put a model and which files
        errors = H.validation_errors(cui, tipo_prompt(flat_inputs(model="(no TIPO model in models/tipo)")))
        assert errors and all(f"No TIPO model found in {roots.none}. Download a TIPO model into it" in e for e in errors), errors
        if dynamic(cui):
            errors = H.validation_errors(cui, tipo_prompt(nested_inputs("gguf", model="(no .gguf TIPO model in models/tipo)")))
            assert errors and all(f"No TIPO model found in {roots.none}" in e for e in errors), errors
    with folders(cui, roots.gguf):  # a .gguf file only: the folder backend says to pick gguf for it
        if dynamic(cui):
            errors = H.validation_errors(cui, tipo_prompt(nested_inputs("transformers", model="(no TIPO model folder in models/tipo)")))
            expected = f"HDM TIPO Prompt: backend 'transformers' has no model: no transformers model folder in {roots.gguf}. Choose backend 'gguf' for the model(s) there ({GGUF})"
            assert errors and all(expected in e for e in errors), errors
        with pytest.raises(Exception, match="backend 'transformers' has no model"):  # and the same when it runs anyway
            H.execute_node(node(cui), **flat_inputs(model=None, device=None, backend={"backend": "transformers"}))


# ----------------------------------------------------------------------------- saved UI workflows
HEAD = ["1girl", "smiling", "", "<|special|>, <|general|>", "long", "short", 1024, 1024, 0.5, 0.95, 60, 0.05, 7, "fixed"]
TAIL = [2, 256, False, True]


@pytest.mark.parametrize(
    "values, inputs, expected_values, expected_inputs",
    [
        # every release so far: model and device among the widgets; a folder means transformers
        ([*HEAD[:3], "TIPO-200M-ft2", *HEAD[3:], "cpu", *TAIL], [],
         [*HEAD, *TAIL, "transformers", "TIPO-200M-ft2", "cpu", "auto"], []),
        # a .gguf file means the gguf backend (no precision there)
        ([*HEAD[:3], "gguf/TIPO-200M-ft2-F16.gguf", *HEAD[3:], "auto", *TAIL], [],
         [*HEAD, *TAIL, "gguf", "gguf/TIPO-200M-ft2-F16.gguf", "auto"], []),
        # saved on 0.3.64 with precision (last); a linked model (a primitive) moves into the combo
        ([*HEAD[:3], "TIPO-500M-ft", *HEAD[3:], "auto", *TAIL, "bf16"],
         [{"name": "model", "type": "COMBO", "widget": {"name": "model"}, "link": 4},
          {"name": "device", "type": "COMBO", "widget": {"name": "device"}, "link": None}],
         [*HEAD, *TAIL, "transformers", "TIPO-500M-ft", "auto", "bf16"],
         [{"name": "backend.model", "type": "COMBO", "widget": {"name": "backend.model"}, "link": 4}]),
    ],
)  # fmt: skip
def test_saved_flat_workflows_move_into_the_backend_combo(cui, both, values, inputs, expected_values, expected_inputs):
    """web/hdm_saved_layouts.js (run under Node, as the frontend runs it on load) reads the saved
    values by name, picks the backend the model file implies and writes the dynamic layout."""
    info = H.node_info(node(cui))
    out = H.saved_layouts_js([(info, {"id": 3, "type": "HDMTipoPrompt", "widgets_values": values, "inputs": inputs})])["out"][0]
    if not dynamic(cui):
        assert out is None  # the flat layout is the node's own
        return
    assert out["widgets_values"] == expected_values
    assert out["inputs"] == expected_inputs
    assert H.saved_layouts_js([(info, out)])["out"][0] is None  # already current: unchanged
