"""HDM Train LyCORIS's algorithm options: a DynamicCombo where ComfyUI has one, flat elsewhere,
and prompts saved in the flat layout train with their own values on both.

See nodes/train_algorithm.py. The frontend side (web/hdm_dynamic_combo.js in the real
frontend) is tested in tests/test_workflows_frontend.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from safetensors import safe_open

import hdm_comfy_harness as H  # registered by tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
FLAT = ("rank", "alpha", "lokr_factor")


def ta(cui):
    return cui.hdm.train_algorithm


def dynamic(cui) -> bool:
    return cui.nodes.NODE_CLASS_MAPPINGS["HDMTrainLyCORIS"].INPUT_TYPES()["required"]["algorithm"][0] == "COMFY_DYNAMICCOMBO_V3"


def test_the_flat_layout_is_written_down_once_for_python_and_javascript(cui):
    js = (REPO / "web" / "hdm_dynamic_combo.js").read_text()
    array = re.search(r"LEGACY_WIDGETS = \[(.*?)\];", js, re.S).group(1)
    assert tuple(re.findall(r'"([a-z_]+)"', array)) == ta(cui).LEGACY_WIDGETS
    frontend_test = (REPO / "tests" / "test_workflows_frontend.py").read_text()
    copy = re.search(r"TRAIN_LEGACY_WIDGETS = \((.*?)\)  # fmt: skip", frontend_test, re.S).group(1)
    assert tuple(re.findall(r'"([a-z_]+)"', copy)) == ta(cui).LEGACY_WIDGETS


def test_widgets_are_the_flat_layout_or_a_dynamic_combo_of_each_algorithms_options(cui):
    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMTrainLyCORIS"].INPUT_TYPES()
    ordered = list(spec["required"].items()) + list(spec["optional"].items())
    algorithm = spec["required"]["algorithm"]
    if not dynamic(cui):  # 0.3.64: exactly the widgets every release saved, in that order
        names = []
        for name, d in ordered:
            if H.is_widget(d):
                names += [name, "control_after_generate"] if d[1].get("control_after_generate") else [name]
        assert tuple(names) == ta(cui).LEGACY_WIDGETS
        return
    assert not set(FLAT) & (set(spec["required"]) | set(spec["optional"]))
    options = {o["key"]: o["inputs"] for o in algorithm[1]["options"]}
    assert list(options) == list(ta(cui).ALGORITHM_INPUTS)
    for key, inputs in options.items():
        assert "required" not in inputs or not inputs["required"], key  # optional: flat prompts still validate
        assert tuple(inputs.get("optional", {})) == ta(cui).ALGORITHM_INPUTS[key]
        for name, d in inputs.get("optional", {}).items():
            assert d[1]["default"] == ta(cui).DEFAULTS[name]
    assert options["diag-oft"]["optional"]["rank"][1]["display_name"] == "block_size"
    assert options["full"] == {"required": {}}


@pytest.mark.parametrize(
    "values, expected",
    [
        # flat lora: lokr_factor's value goes, the rest moves up
        (["f", 1024, "bucket", "error", "danbooru", "lora", 16, 8.0, -1, "attn-mlp", "", 500],
         ["f", 1024, "bucket", "error", "danbooru", "lora", 16, 8.0, "attn-mlp", "", 500]),
        (["f", 1024, "bucket", "error", "danbooru", "boft", 6, 8.0, -1, "attn", ""], ["f", 1024, "bucket", "error", "danbooru", "boft", 6, "attn", ""]),
        (["f", 1024, "bucket", "error", "danbooru", "full", 16, 8.0, -1, "full", ""], ["f", 1024, "bucket", "error", "danbooru", "full", "full", ""]),
        # lokr has all three: the same in both layouts
        (["f", 1024, "bucket", "error", "danbooru", "lokr", 8, 4.0, 4, "attn", ""], ["f", 1024, "bucket", "error", "danbooru", "lokr", 8, 4.0, 4, "attn", ""]),
        # already dynamic: unchanged
        (["f", 1024, "bucket", "error", "danbooru", "lora", 16, 8.0, "attn-mlp", "", 500, 1], ["f", 1024, "bucket", "error", "danbooru", "lora", 16, 8.0, "attn-mlp", "", 500, 1]),
        (["f", 1024, "bucket", "error", "danbooru", "full", "attn", "", 500, 1, 0.1], ["f", 1024, "bucket", "error", "danbooru", "full", "attn", "", 500, 1, 0.1]),
    ],
)  # fmt: skip
def test_saved_flat_values_move_into_the_dynamic_layout(cui, values, expected):
    assert H.dynamic_layout(ta(cui), values) == expected  # the harness's emulation of web/hdm_dynamic_combo.js


def adapter(cui, prompt: dict) -> tuple[dict, dict]:
    """Train (one step) and read back the saved adapter: (tensors, metadata)."""
    result = cui.run(prompt, {"name": ("9", 2)})
    assert result.ok, result.error() or result.validation
    path = cui.models / "loras" / result.outputs["name"]
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def nested(inputs: dict) -> dict:
    return {f"algorithm.{k}" if k in FLAT else k: v for k, v in inputs.items()}


def test_a_flat_prompt_trains_with_its_own_values_a_literal_or_a_link(cui, v3_dataset):
    """lokr with rank 2, alpha 1, factor 4 (not the defaults): the flat literals, the same values
    as the DynamicCombo's names, and rank through a link all save the same adapter."""
    flat = H.train_prompt(algorithm="lokr", rank=2, alpha=1.0, lokr_factor=4, target="attn", save_name="dyn_flat")
    tensors, meta = adapter(cui, flat)
    assert meta["ss_network_dim"] == "2" and float(meta["ss_network_alpha"]) == 1.0
    default, _ = adapter(cui, H.train_prompt(algorithm="lokr", target="attn", save_name="dyn_default"))
    assert not same(tensors, default)
    linked = H.train_prompt(algorithm="lokr", rank=["20", 0], alpha=1.0, lokr_factor=4, target="attn", save_name="dyn_link")
    linked["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 2}}
    assert same(adapter(cui, linked)[0], tensors)
    if dynamic(cui):
        prompt = H.train_prompt(algorithm="lokr", target="attn", save_name="dyn_nested")
        prompt["9"]["inputs"] = nested(prompt["9"]["inputs"] | {"rank": 2, "alpha": 1.0, "lokr_factor": 4})
        assert same(adapter(cui, prompt)[0], tensors)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"rank": 0}, "rank 0 must be a whole number from 1 to 1024"),
        ({"alpha": -1.0}, "alpha -1.0 must be a number from 0 to 4096"),
        ({"lokr_factor": -2}, "lokr_factor -2 must be a whole number from -1 to 1024"),
        ({"algorithm": "ia3"}, "algorithm 'ia3' is not one of the options"),
    ],
)
def test_bad_flat_values_are_refused_when_queued_on_every_host(cui, v3_dataset, inputs, message):
    errors = H.validation_errors(cui, H.train_prompt(**inputs))
    assert errors and all(message in e and "HDM Train LyCORIS" in e for e in errors), errors


def test_bad_nested_value_is_refused_when_queued(cui, v3_dataset):
    if not dynamic(cui):
        pytest.skip("this ComfyUI has no DynamicCombo")
    prompt = H.train_prompt()
    prompt["9"]["inputs"] = nested(prompt["9"]["inputs"] | {"rank": 0})
    errors = H.validation_errors(cui, prompt)
    assert errors and any("rank" in e for e in errors), errors

