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


def validation_errors(cui, prompt: dict) -> list[str]:
    """The details of every node error ComfyUI reports when the prompt is queued (the image is the output)."""
    prompt = dict(prompt, out={"class_type": "HDMTestCapture", "inputs": {"value": ["8", 0], "name": "image"}})
    ok, error, _, node_errors = asyncio.run(cui.execution.validate_prompt("v3", prompt, None))
    assert ok or node_errors, error
    return [] if ok else [e["details"] for err in node_errors.values() for e in err["errors"]]


def train_prompt(**inputs) -> dict:
    prompt = H.txt2img_prompt()
    base = {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset_folder": "v3_dataset", "resolution": 64, "crop": "bucket",
        "missing_captions": "error", "bracket_mode": "danbooru", "algorithm": "lora", "rank": 4, "alpha": 4.0, "lokr_factor": -1,
        "target": "attn-mlp", "exclude": "", "steps": 1, "batch_size": 1, "learning_rate": 1e-3, "scheduler": "constant",
        "warmup_steps": 0, "tread_rate": 0.5, "seed": 0, "save_name": "v3_check", "save_every": 0,
        "gradient_checkpointing": False, "precision": "auto",
    }  # fmt: skip
    base.update(inputs)
    prompt["9"] = {"class_type": "HDMTrainLyCORIS", "inputs": base}
    prompt["7"]["inputs"]["model"] = ["9", 0]
    return prompt


@pytest.fixture
def dataset(cui):
    folder = cui.root / "input" / "v3_dataset"
    if not folder.exists():
        SI.write_image_folder(folder, [(64, 64)] * 2, seed=4)
    return folder


def test_a_good_training_prompt_validates(cui, dataset):
    assert validation_errors(cui, train_prompt()) == []


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"save_name": "../outside"}, "save_name must be a file name, optionally inside sub-folders of models/loras"),
        ({"save_name": "bad:name"}, "save_name must be a file name"),
        ({"dataset_folder": "no_such_dataset"}, "dataset folder"),
    ],
)
def test_bad_training_inputs_are_refused_when_queued(cui, dataset, inputs, message):
    errors = validation_errors(cui, train_prompt(**inputs))
    assert errors and all(message in e for e in errors), errors
    assert all("HDM Train LyCORIS" in e for e in errors)


def test_missing_dataset_folder_message_names_the_folder_and_where_relative_paths_go(cui):
    errors = validation_errors(cui, train_prompt(dataset_folder="no_such_dataset"))
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
    errors = validation_errors(cui, prompt)
    assert any(message in e for e in errors), errors


def test_text_encoder_loader_name_is_checked_when_queued(cui):
    prompt = H.txt2img_prompt()
    prompt["10"] = {"class_type": "HDMTextEncoderLoader", "inputs": {"text_encoder": "nope.safetensors"}}
    prompt["2"]["inputs"]["clip"] = ["10", 0]
    errors = validation_errors(cui, prompt)
    assert any("HDM Text Encoder Loader: text encoder 'nope.safetensors' is not in ComfyUI/models/text_encoders" in e and "Qwen3-0.6B" in e for e in errors), errors


def test_prompt_format_template_is_checked_when_queued(cui):
    prompt = {
        "1": {"class_type": "HDMPromptFormat", "inputs": {"tags": "1girl", "nl_prompt": "", "format": "<|tagz|>", "escape_brackets": True}},
        "2": {"class_type": "HDMTestCapture", "inputs": {"value": ["1", 0], "name": "p"}},
    }
    errors = validation_errors(cui, prompt)
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
    errors = validation_errors(cui, prompt)
    assert any(message in e for e in errors), errors


def test_unknown_training_option_is_refused_when_queued(cui, dataset):
    errors = validation_errors(cui, train_prompt(algorithm="lorra"))
    assert any("HDM Train LyCORIS: algorithm 'lorra' is not one of the options (lora, " in e for e in errors), errors
