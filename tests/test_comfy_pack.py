"""The pack as ComfyUI sees it: import, node registry, tooltips, shipped workflows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _harness():
    name = "hdm_comfy_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("comfy_harness.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H = _harness()

EXPECTED_NODES = {
    "HDMCheckpointLoader": "HDM Checkpoint Loader",
    "HDMTextEncoderLoader": "HDM Text Encoder Loader",
    "HDMTextEncode": "HDM Text Encode (Qwen3)",
    "HDMCamera": "HDM Camera",
    "HDMTreadGuidance": "HDM TREAD Guidance",
    "HDMSampler": "HDM Sampler",
    "HDMVAEDecode": "HDM VAE Decode",
    "HDMTipoPrompt": "HDM TIPO Prompt",
    "HDMPromptFormat": "HDM Prompt Format",
}
WORKFLOW_NAMES = ["hdm_txt2img_ksampler", "hdm_sampler_camera_tread", "hdm_lora"]


@pytest.fixture(scope="module")
def cui(comfyui_path):
    return H.get_comfy(comfyui_path)


def test_comfyui_imports_the_pack_by_path(cui):
    assert cui.pack_nodes == sorted(EXPECTED_NODES)
    for node_id, display in EXPECTED_NODES.items():
        assert cui.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
    # Imported as a package by file path, hdm_core relative to it: no top-level 'nodes' shadowing.
    assert cui.nodes.__file__.startswith(str(cui.path))
    assert cui.hdm.__name__.endswith(".nodes")


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_every_node_instantiates_with_category_and_tooltips(cui, node_id):
    cls = cui.nodes.NODE_CLASS_MAPPINGS[node_id]
    cls()  # ComfyUI instantiates node classes without arguments
    assert cls.CATEGORY == "HDM"
    assert cls.DESCRIPTION
    assert callable(getattr(cls, cls.FUNCTION))
    spec = cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    assert inputs
    for name, definition in inputs.items():
        assert len(definition) > 1 and definition[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES)


def test_loader_lists_model_folders(cui):
    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"].INPUT_TYPES()["required"]
    assert H.CKPT_NAME in spec["ckpt_name"][0]
    assert spec["text_encoder"][0][0] == "from checkpoint"
    assert H.TE_NAME in spec["text_encoder"][0]
    assert H.TE_NAME in cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncoderLoader"].INPUT_TYPES()["required"]["text_encoder"][0]


def test_sampler_offers_reference_schedule_first_and_comfy_schedulers(cui):
    import comfy.samplers

    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMSampler"].INPUT_TYPES()["required"]
    schedulers = spec["scheduler"][0]
    assert schedulers[0] == "hdm_uniform" and spec["scheduler"][1]["default"] == "hdm_uniform"
    assert set(comfy.samplers.KSampler.SCHEDULERS) <= set(schedulers)
    assert spec["sampler_name"][0] == comfy.samplers.KSampler.SAMPLERS


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_has_no_missing_nodes_and_matches_its_api_twin(cui, name):
    ui = H.load_ui_workflow(name)
    assert ui["version"] == 0.4 and ui["links"] and ui["nodes"]
    for node in ui["nodes"]:
        assert node["type"] in cui.nodes.NODE_CLASS_MAPPINGS, f"{name}: node type {node['type']} is missing"
    # Link table consistent with the nodes' own input/output records.
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == by_id[dst]["inputs"][dst_slot]["type"] == typ
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui["last_node_id"] == max(by_id)
    api = H.load_api_workflow(name)
    converted = H.ui_to_api(ui, cui.nodes.NODE_CLASS_MAPPINGS)
    assert converted == {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in api.items()}


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_validates_in_comfyui(cui, name):
    import asyncio

    prompt = H.load_api_workflow(name)
    if name == "hdm_lora":
        cui.write_lora("hdm-lora.safetensors")
    ok, error, outputs, node_errors = asyncio.run(cui.execution.validate_prompt("validate", prompt, None))
    assert ok, (error, node_errors)
    assert outputs


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflows_use_model_card_defaults(name):
    api = H.load_api_workflow(name)
    sampler = next(v["inputs"] for v in api.values() if v["class_type"] in ("KSampler", "HDMSampler"))
    assert 2.0 <= sampler["cfg"] <= 4.0 and 16 <= sampler["steps"] <= 32
    latent = next(v["inputs"] for v in api.values() if v["class_type"] == "EmptyLatentImage")
    assert (latent["width"], latent["height"]) in {(1024, 1024), (1280, 960), (1440, 800), (960, 1280), (800, 1440)}
    loader = next(v["inputs"] for v in api.values() if v["class_type"] == "HDMCheckpointLoader")
    assert loader == {"ckpt_name": H.CKPT_NAME, "text_encoder": H.TE_NAME}
