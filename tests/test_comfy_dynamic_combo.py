"""HDM Train LyCORIS's algorithm options and data source: DynamicCombos where ComfyUI has them,
flat elsewhere, and prompts and UI workflows saved in the flat layout train with their own values
on both.

See nodes/train_algorithm.py and nodes/train_data.py. Saved UI workflows are rewritten by
web/hdm_saved_layouts.js, run here under Node (the same file the frontend loads); the real
frontend is tested in tests/test_workflows_frontend.py.
"""

from __future__ import annotations

import pytest
from safetensors import safe_open

import hdm_comfy_harness as H  # registered by tests/conftest.py

FLAT = ("rank", "alpha", "lokr_factor")
NODE = "HDMTrainLyCORIS"


def ta(cui):
    return cui.hdm.train_algorithm


def train_cls(cui):
    return cui.nodes.NODE_CLASS_MAPPINGS[NODE]


def dynamic(cui) -> bool:
    return bool(H.dynamic_combos(train_cls(cui)))


def test_flat_hosts_keep_the_saved_layout_and_dynamic_hosts_show_each_options_own_inputs(cui):
    spec = train_cls(cui).INPUT_TYPES()
    legacy = H.saved_layouts_js([])["LEGACY_WIDGETS"][NODE]
    if not dynamic(cui):  # 0.3.64: exactly the widgets every release saved, in that order
        assert H.widget_names(spec) == legacy
        return
    top = set(spec["required"]) | set(spec["optional"])
    assert not (set(FLAT) | {"dataset_folder", "resolution", "crop", "images", "latent", "conditioning", "captions"}) & top
    algorithm = {o["key"]: o["inputs"] for o in spec["required"]["algorithm"][1]["options"]}
    assert list(algorithm) == list(ta(cui).ALGORITHM_INPUTS)
    for key, inputs in algorithm.items():
        assert not inputs.get("required"), key  # optional: flat prompts with "algorithm": "lora" still validate
        assert tuple(inputs.get("optional", {})) == ta(cui).ALGORITHM_INPUTS[key]
        for name, d in inputs.get("optional", {}).items():
            assert d[1]["default"] == ta(cui).DEFAULTS[name]
    assert algorithm["diag-oft"]["optional"]["rank"][1]["display_name"] == "block_size"
    assert algorithm["full"] == {"required": {}}
    # the data source: optional (prompts saved before it have none), after the CLIP and VAE sockets
    assert list(spec["optional"])[:3] == ["clip", "vae", "data_source"]
    sources = H.dynamic_combos(train_cls(cui))["data_source"]
    assert {k: tuple(n for n, _ in v) for k, v in sources.items()} == cui.hdm.train_data.SOURCE_INPUTS
    options = {o["key"]: o["inputs"] for o in spec["optional"]["data_source"][1]["options"]}
    assert list(options["latent"]["required"]) == ["latent", "conditioning"]
    assert options["images"]["required"]["images"][0] == "IMAGE" and list(options["images"]["optional"]) == ["captions"]
    assert options["folder"]["required"]["dataset_folder"][0] == "STRING"


# ----------------------------------------------------------------------------- saved UI workflows
A, B = "folder/x", "a cat"
TAIL = ["attn", "x.*", 100, 2, 0.001, "linear", 5, 0.25, 7, "fixed", "name", 10, True, "bf16"]


def saved(values, inputs=()) -> dict:
    return {"id": 9, "type": NODE, "widgets_values": values, "inputs": list(inputs)}


@pytest.mark.parametrize(
    "values, inputs, expected_values, expected_inputs",
    [
        # flat, every release so far: a folder, lora (lokr_factor's value goes), preview_every 3
        ([A, 512, "square", "empty", "comfy", "lora", 8, 4.0, -1, *TAIL, "", 3], [],
         ["lora", 8, 4.0, *TAIL, "folder", A, 512, "square", "empty", "comfy", 3], []),
        # saved before preview_every existed (24 values), boft: its block factor only
        ([A, 1024, "bucket", "error", "danbooru", "boft", 6, 8.0, -1, *TAIL, ""], [],
         ["boft", 6, *TAIL, "folder", A, 1024, "bucket", "error", "danbooru", 0], []),
        # lokr has all three numbers in both layouts
        ([A, 1024, "bucket", "error", "danbooru", "lokr", 8, 4.0, 4, *TAIL, "", 0], [],
         ["lokr", 8, 4.0, 4, *TAIL, "folder", A, 1024, "bucket", "error", "danbooru", 0], []),
        # saved on v0.33 by the release with the algorithm's DynamicCombo only: full has no numbers
        ([A, 1024, "bucket", "error", "danbooru", "full", *TAIL, "", 2], [],
         ["full", *TAIL, "folder", A, 1024, "bucket", "error", "danbooru", 2], []),
        # an IMAGE batch: the linked socket moves into the combo, the unlinked dataset_folder socket goes
        (["", 768, "bucket", "error", "danbooru", "lora", 16, 8.0, -1, *TAIL, B, 0],
         [{"name": "images", "type": "IMAGE", "link": 5}, {"name": "dataset_folder", "type": "STRING", "widget": {"name": "dataset_folder"}, "link": None},
          {"name": "model", "type": "MODEL", "link": 1}],
         ["lora", 16, 8.0, *TAIL, "images", 768, "bucket", "error", "danbooru", B, 0],
         [{"name": "data_source.images", "type": "IMAGE", "link": 5}, {"name": "model", "type": "MODEL", "link": 1}]),
        # latents: both sockets move; a linked rank (a primitive) moves into the algorithm's combo
        (["", 1024, "bucket", "error", "danbooru", "loha", 4, 2.0, -1, *TAIL, "", 0],
         [{"name": "latent", "type": "LATENT", "link": 6}, {"name": "conditioning", "type": "CONDITIONING", "link": 7},
          {"name": "rank", "type": "INT", "widget": {"name": "rank"}, "link": 8}],
         ["loha", 4, 2.0, *TAIL, "latent", 0],
         [{"name": "data_source.latent", "type": "LATENT", "link": 6}, {"name": "data_source.conditioning", "type": "CONDITIONING", "link": 7},
          {"name": "algorithm.rank", "type": "INT", "widget": {"name": "algorithm.rank"}, "link": 8}]),
    ],
)  # fmt: skip
def test_saved_flat_workflows_move_into_the_dynamic_layout(cui, values, inputs, expected_values, expected_inputs):
    info = H.node_info(train_cls(cui))
    out = H.saved_layouts_js([(info, saved(values, inputs))])["out"][0]
    if not dynamic(cui):
        assert out is None  # nothing to do where the layout is the saved one
        return
    assert out["widgets_values"] == expected_values
    assert out["inputs"] == expected_inputs
    # and the rewritten node is in the current layout: loading it again changes nothing
    assert H.saved_layouts_js([(info, out)])["out"][0] is None


# ----------------------------------------------------------------------------- prompts
def adapter(cui, prompt: dict) -> tuple[dict, dict]:
    """Train (one step) and read back the saved adapter: (tensors, metadata)."""
    result = cui.run(prompt, {"name": ("9", 2)})
    assert result.ok, result.error() or result.validation
    path = cui.models / "loras" / result.outputs["name"]
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def as_queued(cui, prompt: dict) -> dict:
    """The training node's flat inputs as the frontend queues them on this host (DynamicCombo names)."""
    prompt["9"]["inputs"] = H.nest_flat_inputs(train_cls(cui), NODE, prompt["9"]["inputs"])
    return prompt


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
        queued = as_queued(cui, H.train_prompt(algorithm="lokr", rank=2, alpha=1.0, lokr_factor=4, target="attn", save_name="dyn_nested"))
        assert queued["9"]["inputs"]["algorithm.rank"] == 2 and queued["9"]["inputs"]["data_source"] == "folder"
        assert same(adapter(cui, queued)[0], tensors)


@pytest.mark.parametrize("source", ["images", "latent"])
def test_each_data_source_trains_the_same_adapter_flat_or_chosen_in_the_combo(cui, source):
    """An IMAGE batch (EmptyImage) with captions, or its latents (VAE Encode) with HDM Text Encode's
    conditioning: the flat inputs and the DynamicCombo's save the same adapter."""
    extra = {"20": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0x3366AA}}}
    if source == "images":
        inputs = {"dataset_folder": "", "images": ["20", 0], "captions": "1girl, smile"}
    else:
        extra["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}}
        inputs = {"dataset_folder": "", "latent": ["21", 0], "conditioning": ["2", 0]}
    flat = H.train_prompt(**inputs, save_name=f"src_{source}") | extra
    tensors, meta = adapter(cui, flat)
    assert meta["hdm_dataset"].startswith("IMAGE batch (2" if source == "images" else "LATENT (2")
    if not dynamic(cui):
        return
    queued = as_queued(cui, H.train_prompt(**inputs, save_name=f"src_{source}_nested") | extra)
    assert queued["9"]["inputs"]["data_source"] == source and f"data_source.{source}" in queued["9"]["inputs"]
    assert "dataset_folder" not in queued["9"]["inputs"] and "data_source.dataset_folder" not in queued["9"]["inputs"]
    assert same(adapter(cui, queued)[0], tensors)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"rank": 0}, "rank 0 must be a whole number from 1 to 1024"),
        ({"alpha": -1.0}, "alpha -1.0 must be a number from 0 to 4096"),
        ({"lokr_factor": -2}, "lokr_factor -2 must be a whole number from -1 to 1024"),
        ({"algorithm": "ia3"}, "algorithm 'ia3' is not one of the options"),
        ({"resolution": 10}, "resolution 10 must be a whole number from 64 to 4096"),
        ({"crop": "circle"}, "crop 'circle' is not one of the options (bucket, square)"),
        ({"missing_captions": "skip"}, "missing_captions 'skip' is not one of the options (error, empty)"),
        ({"dataset_folder": "no_such_folder"}, "no_such_folder does not exist"),
        # ComfyUI leaves every check to a validate_inputs that takes **kwargs: the node checks all
        ({"steps": 0}, "steps 0 must be a whole number from 1 to 1000000"),
        ({"tread_rate": 0.99}, "tread_rate 0.99 must be a number from 0 to 0.95"),
        ({"scheduler": "exp"}, "scheduler 'exp' is not one of the options"),
    ],
)
def test_bad_flat_values_are_refused_when_queued_on_every_host(cui, v3_dataset, inputs, message):
    errors = H.validation_errors(cui, H.train_prompt(**inputs))
    assert errors and all(message in e and "HDM Train LyCORIS" in e for e in errors), errors


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"rank": 0}, "rank"),
        ({"dataset_folder": "no_such_folder"}, "no_such_folder does not exist"),
        ({"crop": "circle"}, "circle"),
        ({"dataset_folder": "", "images": None}, "images"),  # the images source without its IMAGE: "Required input is missing"
    ],
)
def test_bad_nested_values_are_refused_when_queued(cui, v3_dataset, inputs, message):
    if not dynamic(cui):
        pytest.skip("this ComfyUI has no DynamicCombo")
    prompt = as_queued(cui, H.train_prompt(**inputs))
    if "images" in inputs:
        prompt["9"]["inputs"] = {k: v for k, v in prompt["9"]["inputs"].items() if k != "data_source.images"} | {"data_source": "images"}
    errors = H.validation_errors(cui, prompt)
    assert errors and any(message in e for e in errors), errors
