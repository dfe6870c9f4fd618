"""Workflows saved with the V1 pack keep opening and running, with the same images.

``tests/fixtures/legacy_workflows`` holds the UI and API workflows the pack shipped before the
nodes moved to ComfyUI's V3 schema (a frozen copy: the shipped ones may change later, these must
not). ``reference_outputs.json`` holds, per ComfyUI version, a checksum of the image each API
workflow makes at test size, recorded with the V1 nodes; the V3 nodes must reproduce it bit
for bit. Record again (``HDM_RECORD_LEGACY=1``) only for a new ComfyUI host, never to paper
over a change in output.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_workflows"
REFERENCE = LEGACY / "reference_outputs.json"
NAMES = sorted(p.stem for p in (LEGACY / "api").glob("*.json"))
TIPO_MODEL = "TIPO-200M-ft2"


def comfyui_version(cui) -> str:
    ns: dict = {}
    exec((cui.path / "comfyui_version.py").read_text(), ns)
    return ns["__version__"]


def image_digest(image: torch.Tensor) -> dict:
    """What the reference keeps of an IMAGE: sha256 of its 8-bit pixels, plus readable statistics."""
    pixels = image.float().clamp(0, 1).mul(255).round().to(torch.uint8).contiguous()
    return {
        "shape": list(pixels.shape),
        "sha256_8bit": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
        "mean": round(float(image.float().mean()), 6),
        "max": round(float(image.float().max()), 6),
    }


def write_tiny_tipo(cui) -> None:
    folder = cui.models / "tipo" / TIPO_MODEL
    if (folder / "model.safetensors").exists():
        return
    spec = importlib.util.spec_from_file_location("hdm_tipo_conftest_helpers", Path(__file__).parent / "tipo" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_tiny_tipo(folder, seed=0)


def prepare(cui, name: str) -> dict:
    """The legacy API workflow at test size, with the files it names in place."""
    prompt = H.shrink(json.loads((LEGACY / "api" / f"{name}.json").read_text()), steps=2)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "HDMTipoPrompt":
            inputs.update(device="cpu", max_new_tokens=32, max_retry=0, length_check=False)
        if node["class_type"] == "HDMTrainLyCORIS":
            inputs.update(resolution=64, save_every=0)
    if name == "hdm_lora":
        cui.write_lora("hdm-lora.safetensors")
    if name == "hdm_tipo":
        write_tiny_tipo(cui)
    if name == "hdm_train_lycoris":
        train_id = H.find_node(prompt, "HDMTrainLyCORIS")
        cui.write_dataset(prompt[train_id]["inputs"]["dataset_folder"])
    return prompt


def decode_node(prompt: dict) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] in ("VAEDecode", "HDMVAEDecode"))


def dynamic_train_node(cui) -> bool:
    """Whether this host has DynamicCombos on the pack's nodes (nodes/v3.py DYNAMIC_INPUTS)."""
    return bool(H.dynamic_combos(cui.nodes.NODE_CLASS_MAPPINGS["HDMTrainLyCORIS"]))


def nested(cui, node: dict) -> dict:
    """A node's flat inputs as the frontend queues them on this host (``algorithm.rank`` …)."""
    return H.nest_flat_inputs(cui.nodes.NODE_CLASS_MAPPINGS[node["class_type"]], node["class_type"], node["inputs"])


@pytest.mark.parametrize("name", NAMES)
def test_legacy_api_workflow_gives_the_recorded_image(cui, name):
    prompt = prepare(cui, name)
    result = cui.run(prompt, {"image": (decode_node(prompt), 0)})
    assert result.ok, result.error() or result.validation
    got = image_digest(result.outputs["image"])
    version = comfyui_version(cui)
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    if os.environ.get("HDM_RECORD_LEGACY") == "1":
        reference.setdefault(version, {})[name] = got
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
    assert version in reference and name in reference[version], f"no recorded output for {name} on ComfyUI {version}"
    assert got == reference[version][name]


@pytest.mark.parametrize("name", NAMES)
def test_legacy_ui_workflow_converts_to_its_api_twin_on_the_current_nodes(cui, name):
    """The frontend fills widgets by position: the old widgets_values must land on the same inputs."""
    ui = json.loads((LEGACY / f"{name}.json").read_text())
    api = json.loads((LEGACY / "api" / f"{name}.json").read_text())
    converted = H.ui_to_api(ui, cui.nodes.NODE_CLASS_MAPPINGS)
    # with DynamicCombos: each combo's option and its inputs under the combo's names
    expected = {k: {"class_type": v["class_type"], "inputs": nested(cui, copy.deepcopy(v))} for k, v in api.items()}
    # inputs added since (optional, last) take their defaults, as the frontend gives them
    for node_id, node in converted.items():
        for input_name in set(node["inputs"]) - set(expected[node_id]["inputs"]):
            spec = cui.nodes.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES().get("optional", {})
            assert input_name in spec, f"{name}: node {node_id} gained a required input {input_name}"
            assert node["inputs"][input_name] == spec[input_name][1].get("default"), input_name
            expected[node_id]["inputs"][input_name] = node["inputs"][input_name]
    assert converted == expected


def test_training_workflow_queued_with_the_dynamic_combo_names_gives_the_recorded_image(cui):
    """The API prompt the frontend queues for the legacy training workflow on a DynamicCombo host
    (``algorithm.rank``, ``data_source.dataset_folder`` …, tests/test_workflows_frontend.py) trains
    the same adapter as the flat one."""
    if not dynamic_train_node(cui):
        pytest.skip("this ComfyUI has no DynamicCombo: HDM Train LyCORIS keeps its flat inputs")
    prompt = prepare(cui, "hdm_train_lycoris")
    train_id = H.find_node(prompt, "HDMTrainLyCORIS")
    prompt[train_id]["inputs"] = nested(cui, prompt[train_id])
    inputs = prompt[train_id]["inputs"]
    assert "algorithm.rank" in inputs and "data_source.dataset_folder" in inputs and not {"rank", "dataset_folder"} & set(inputs)
    result = cui.run(prompt, {"image": (decode_node(prompt), 0)})
    assert result.ok, result.error() or result.validation
    reference = json.loads(REFERENCE.read_text())[comfyui_version(cui)]["hdm_train_lycoris"]
    assert image_digest(result.outputs["image"]) == reference
