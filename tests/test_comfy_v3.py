"""What the V3 schema adds: the entry point, checks when a prompt is queued, and the dataset fingerprint."""

from __future__ import annotations

import asyncio
import os

import pytest

import hdm_comfy_harness as H  # registered by tests/conftest.py
import standins as SI  # registered by tests/conftest.py


def test_pack_exports_only_the_v3_entry_point(cui):
    from comfy_api.latest import ComfyExtension, io

    # ComfyUI takes NODE_CLASS_MAPPINGS first when a module has both, so the pack must not have it
    assert not hasattr(cui.pack, "NODE_CLASS_MAPPINGS") and not hasattr(cui.pack, "NODE_DISPLAY_NAME_MAPPINGS")
    extension = asyncio.run(cui.pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    nodes = asyncio.run(extension.get_node_list())
    assert all(issubclass(n, io.ComfyNode) for n in nodes)
    assert sorted(n.GET_SCHEMA().node_id for n in nodes) == cui.pack_nodes
    for n in nodes:
        assert cui.nodes.NODE_CLASS_MAPPINGS[n.GET_SCHEMA().node_id] is n


def test_a_good_training_prompt_validates(cui, v3_dataset):
    assert H.validation_errors(cui, H.train_prompt()) == []


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"save_name": "../outside"}, "save_name must be a file name, optionally inside sub-folders of models/loras"),
        ({"save_name": "bad:name"}, "save_name must be a file name"),
        ({"dataset_folder": "no_such_dataset"}, "dataset folder"),
    ],
)
def test_bad_training_inputs_are_refused_when_queued(cui, v3_dataset, inputs, message):
    errors = H.validation_errors(cui, H.train_prompt(**inputs))
    assert errors and all(message in e for e in errors), errors
    assert all("HDM Train LyCORIS" in e for e in errors)


def test_missing_dataset_folder_message_names_the_folder_and_where_relative_paths_go(cui):
    errors = H.validation_errors(cui, H.train_prompt(dataset_folder="no_such_dataset"))
    where = os.path.join(str(cui.root / "input"), "no_such_dataset")
    assert any(f"dataset folder {where} does not exist" in e and "ComfyUI's input folder" in e for e in errors), errors


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"ckpt_name": "gone.safetensors"}, "HDM Checkpoint Loader: checkpoint 'gone.safetensors' is not in ComfyUI/models/checkpoints"),
        ({"text_encoder": "qwen-gone.safetensors"}, "HDM Checkpoint Loader: text encoder 'qwen-gone.safetensors' is not in ComfyUI/models/text_encoders"),
        ({"weight_dtype": "fp4"}, "HDM Checkpoint Loader: weight_dtype 'fp4' is not one of the options (default, fp8_e4m3fn, "),
    ],
)
def test_loader_names_are_checked_when_queued(cui, inputs, message):
    prompt = H.txt2img_prompt()
    prompt["1"]["inputs"].update(inputs)
    errors = H.validation_errors(cui, prompt)
    assert any(message in e for e in errors), errors


def test_text_encoder_loader_name_is_checked_when_queued(cui):
    prompt = H.txt2img_prompt()
    prompt["10"] = {"class_type": "HDMTextEncoderLoader", "inputs": {"text_encoder": "nope.safetensors"}}
    prompt["2"]["inputs"]["clip"] = ["10", 0]
    errors = H.validation_errors(cui, prompt)
    assert any("HDM Text Encoder Loader: text encoder 'nope.safetensors' is not in ComfyUI/models/text_encoders" in e and "Qwen3-0.6B" in e for e in errors), errors


def test_prompt_format_template_is_checked_when_queued(cui):
    prompt = {
        "1": {"class_type": "HDMPromptFormat", "inputs": {"tags": "1girl", "nl_prompt": "", "format": "<|tagz|>", "escape_brackets": True}},
        "2": {"class_type": "HDMTestCapture", "inputs": {"value": ["1", 0], "name": "p"}},
    }
    errors = H.validation_errors(cui, prompt)
    assert any("unknown placeholder(s) in the format template: <|tagz|>" in e for e in errors), errors


def test_dataset_fingerprint_follows_the_folder_listing(cui, tmp_path):
    node = cui.nodes.NODE_CLASS_MAPPINGS["HDMTrainLyCORIS"]
    SI.write_image_folder(tmp_path, [(64, 64)] * 2, seed=1)
    first = node.fingerprint_inputs(dataset_folder=str(tmp_path))
    assert first == node.fingerprint_inputs(dataset_folder=str(tmp_path))
    caption = next(tmp_path.rglob("*.txt"))
    caption.write_text(caption.read_text() + ", edited")
    assert node.fingerprint_inputs(dataset_folder=str(tmp_path)) != first
    assert node.fingerprint_inputs(dataset_folder="") == ""
    # the data_source DynamicCombo's nested folder (v0.33 hands fingerprint_inputs every input, nested)
    changed = node.fingerprint_inputs(dataset_folder=str(tmp_path))
    assert node.fingerprint_inputs(data_source={"data_source": "folder", "dataset_folder": str(tmp_path)}) == changed
    assert node.fingerprint_inputs(data_source={"data_source": "latent", "latent": None, "conditioning": None}) == ""


@pytest.mark.parametrize(
    "node_id, edit, message",
    [
        ("7", {"scheduler": "hdm_uniformm"}, "HDM Sampler: scheduler 'hdm_uniformm' is not one of the options (hdm_uniform, "),
        ("7", {"sampler_name": "eulr"}, "HDM Sampler: sampler_name 'eulr' is not one of the options"),
        ("2", {"bracket_mode": "danboru"}, "HDM Text Encode (Qwen3): bracket_mode 'danboru' is not one of the options (danbooru, comfy)"),
    ],
)
def test_unknown_options_are_refused_when_queued_on_every_host(cui, node_id, edit, message):
    """0.3.64 does not check V3 combo values itself; the nodes' validate_inputs does, with the options listed."""
    prompt = H.txt2img_prompt()
    prompt[node_id]["inputs"].update(edit)
    errors = H.validation_errors(cui, prompt)
    assert any(message in e for e in errors), errors


def test_unknown_training_option_is_refused_when_queued(cui, v3_dataset):
    errors = H.validation_errors(cui, H.train_prompt(algorithm="lorra"))
    assert any("HDM Train LyCORIS: algorithm 'lorra' is not one of the options (lora, " in e for e in errors), errors
