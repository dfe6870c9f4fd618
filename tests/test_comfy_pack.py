"""The pack as ComfyUI sees it: import, node registry, tooltips, shipped workflows."""

from __future__ import annotations

import pytest

import hdm_comfy_harness as H  # registered by tests/conftest.py

EXPECTED_NODES = {
    "HDMCheckpointLoader": "HDM Checkpoint Loader",
    "HDMTextEncoderLoader": "HDM Text Encoder Loader",
    "HDMTextEncode": "HDM Text Encode (Qwen3)",
    "HDMCamera": "HDM Camera",
    "HDMTreadGuidance": "HDM TREAD Guidance",
    "HDMSampler": "HDM Sampler",
    "HDMVAEDecode": "HDM VAE Decode",
    "HDMTrainLyCORIS": "HDM Train LyCORIS",
    "HDMTipoPrompt": "HDM TIPO Prompt",
    "HDMPromptFormat": "HDM Prompt Format",
}
WORKFLOW_NAMES = sorted(p.stem for p in H.WORKFLOWS.glob("*.json"))


def write_workflow_models(cui, name: str) -> None:
    """The model files a shipped workflow names, beyond the harness's checkpoint and text encoder."""
    if name == "hdm_lora":
        cui.write_lora("hdm-lora.safetensors")
    if name == "hdm_tipo":
        cui.write_tipo_stub("TIPO-200M-ft2")
    if name == "hdm_train_lycoris":  # its dataset folder must exist: HDM Train LyCORIS checks it when the prompt is queued
        cui.write_dataset("hdm_dataset")
    for node in H.load_api_workflow(name).values():  # img2img/inpainting: the picture LoadImage names, in the input folder
        if node["class_type"] == "LoadImage":
            from PIL import Image

            path = cui.root / "input" / node["inputs"]["image"]
            if not path.exists():
                Image.new("RGBA", (64, 64), (200, 120, 80, 255)).save(path)


input_spec = H.input_definitions


def definition_of(cls, inputs: dict, name: str):
    """The definition of a prompt's input ``name``; ``combo.input`` from the option the prompt chose
    (options may share an input name with other definitions, e.g. HDM TIPO Prompt's ``backend.model``)."""
    if "." not in name:
        return input_spec(cls)[name]
    combo, sub = name.split(".", 1)
    return dict(H.dynamic_combos(cls)[combo][inputs[combo]])[sub]


is_widget = H.is_widget


def check_widget_value(where: str, definition, value) -> None:
    """A widget value the node accepts: a combo option, a number in range, the right type."""
    kind, opts = definition[0], (definition[1] if len(definition) > 1 else {})
    options = H.combo_options(definition)
    if options is not None:
        assert value in options, f"{where}: {value!r} is not one of the options {options[:8]}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an integer"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    if kind in ("INT", "FLOAT"):
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} is outside [{opts.get('min')}, {opts.get('max')}]"


def test_comfyui_imports_the_pack_by_path(cui):
    assert cui.pack_nodes == sorted(EXPECTED_NODES)
    for node_id, display in EXPECTED_NODES.items():
        assert cui.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
    # Imported as a package by file path, hdm_core relative to it: no top-level 'nodes' shadowing.
    assert cui.nodes.__file__.startswith(str(cui.path))
    assert cui.hdm.__name__.endswith(".nodes")


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_every_node_instantiates_with_category_and_tooltips(cui, node_id):
    from comfy_api.latest import io

    cls = cui.nodes.NODE_CLASS_MAPPINGS[node_id]
    assert issubclass(cls, io.ComfyNode), f"{node_id} is not a V3 node"
    # no instance state: everything the class defines is a classmethod/staticmethod (ComfyUI clones and locks the class to run it)
    set_by_comfyui = {"SCHEMA", "RELATIVE_PYTHON_MODULE"}
    state = [k for k, v in vars(cls).items() if not k.startswith("_") and k not in set_by_comfyui and not isinstance(v, (classmethod, staticmethod))]
    assert state == [], f"{node_id} defines class state {state}"
    cls()  # ComfyUI instantiates node classes without arguments
    assert cls.CATEGORY == "HDM"
    assert cls.DESCRIPTION
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.GET_SCHEMA().node_id == node_id
    spec = cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    assert inputs
    for name, definition in inputs.items():
        assert len(definition) > 1 and definition[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        # ComfyUI's validation checks combo values only when the options are a list (not a tuple)
        assert not isinstance(definition[0], tuple), f"{node_id}.{name}: combo options must be a list"
        if is_widget(definition) and "default" in definition[1]:
            check_widget_value(f"{node_id}.{name} default", definition, definition[1]["default"])
    assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES)


def test_loader_lists_model_folders(cui):
    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"].INPUT_TYPES()["required"]
    assert H.CKPT_NAME in H.combo_options(spec["ckpt_name"])
    assert H.combo_options(spec["text_encoder"])[0] == "from checkpoint"
    assert H.TE_NAME in H.combo_options(spec["text_encoder"])
    assert H.TE_NAME in H.combo_options(cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncoderLoader"].INPUT_TYPES()["required"]["text_encoder"])


def test_sampler_offers_reference_schedule_first_and_comfy_schedulers(cui):
    import comfy.samplers

    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMSampler"].INPUT_TYPES()["required"]
    schedulers = H.combo_options(spec["scheduler"])
    assert schedulers[0] == "hdm_uniform" and spec["scheduler"][1]["default"] == "hdm_uniform"
    assert set(comfy.samplers.KSampler.SCHEDULERS) <= set(schedulers)
    assert H.combo_options(spec["sampler_name"]) == comfy.samplers.KSampler.SAMPLERS


def test_every_ui_workflow_has_an_api_twin():
    assert WORKFLOW_NAMES, "no workflows shipped"
    assert sorted(p.stem for p in (H.WORKFLOWS / "api").glob("*.json")) == WORKFLOW_NAMES


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_has_no_missing_nodes_and_matches_its_api_twin(cui, name):
    write_workflow_models(cui, name)
    ui = H.load_ui_workflow(name)
    assert ui["version"] == 0.4 and ui["links"] and ui["nodes"]
    classes = cui.nodes.NODE_CLASS_MAPPINGS
    for node in ui["nodes"]:
        assert node["type"] in classes, f"{name}: node type {node['type']} is missing"
    # Link table consistent with the nodes' own input/output records.
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == by_id[dst]["inputs"][dst_slot]["type"] == typ
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui["last_node_id"] == max(by_id)
    assert len({link[0] for link in ui["links"]}) == len(ui["links"])
    # Every slot is one the node defines, with its type; every required socket is connected.
    for node in ui["nodes"]:
        cls, where = classes[node["type"]], f"{name}: node {node['id']} ({node['type']})"
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs, defined = [(o["name"], o["type"]) for o in node["outputs"]], list(zip(names, cls.RETURN_TYPES))
        if node["type"] in EXPECTED_NODES:
            assert outputs == defined, where
        else:  # stock nodes gain outputs over versions (v0.33's SaveImage passes its images on); the frontend appends them
            assert outputs == defined[: len(outputs)], where
        spec = input_spec(cls)
        for inp in node["inputs"]:
            assert inp["name"] in spec, f"{where}: no input named {inp['name']}"
            definition = spec[inp["name"]]
            if is_widget(definition):
                assert inp.get("widget", {}).get("name") == inp["name"], f"{where}: widget input {inp['name']} is not marked as a widget"
                assert inp["type"] == ("COMBO" if H.combo_options(definition) is not None else definition[0]), f"{where}: {inp['name']}"
            else:
                assert inp["type"] == definition[0], f"{where}: input {inp['name']} is {inp['type']}, the node takes {definition[0]}"
        connected = {inp["name"] for inp in node["inputs"] if inp.get("link") is not None}
        for input_name, definition in cls.INPUT_TYPES().get("required", {}).items():
            if not is_widget(definition):
                assert input_name in connected, f"{where}: required input {input_name} is not connected"
    # The API twin is the same graph with the same values, and every widget value is valid.
    api = H.load_api_workflow(name)
    converted = H.ui_to_api(ui, classes)
    for node_id, node in api.items():  # with DynamicCombos: each combo's option, its inputs as combo.input
        node["inputs"] = H.nest_flat_inputs(classes[node["class_type"]], node["class_type"], node["inputs"])
    for node_id, node in converted.items():  # optional inputs added later (last) keep their defaults in both
        optional = classes[node["class_type"]].INPUT_TYPES().get("optional", {})
        for input_name in [k for k in node["inputs"] if k not in api[node_id]["inputs"] and k in optional]:
            assert node["inputs"][input_name] == optional[input_name][1].get("default")
            del node["inputs"][input_name]
    assert converted == {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in api.items()}
    for node_id, node in converted.items():
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):  # a link: [source node id, output index]
                assert len(value) == 2 and value[0] in converted and isinstance(value[1], int)
                continue
            definition = definition_of(classes[node["class_type"]], node["inputs"], input_name)
            check_widget_value(f"{name}: node {node_id} ({node['class_type']}).{input_name}", definition, value)
    titles = {str(n["id"]): n.get("title") for n in ui["nodes"]}
    for node_id, node in api.items():
        assert node["_meta"]["title"] == (titles[node_id] or cui.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node["class_type"], node["class_type"]))


def test_widget_value_check_catches_bad_values(cui):
    sampler = input_spec(cui.nodes.NODE_CLASS_MAPPINGS["HDMSampler"])
    for input_name, value, message in (
        ("scheduler", "hdm_uniformm", "not one of the options"),
        ("steps", 0, r"outside \[1,"),
        ("cfg", "3", "not a number"),
        ("steps", 2.5, "not an integer"),
    ):
        with pytest.raises(AssertionError, match=message):
            check_widget_value("HDMSampler", sampler[input_name], value)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_validates_in_comfyui(cui, name):
    import asyncio

    prompt = H.load_api_workflow(name)
    write_workflow_models(cui, name)
    ok, error, outputs, node_errors = asyncio.run(cui.execution.validate_prompt("validate", prompt, None))
    assert ok, (error, node_errors)
    assert outputs


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflows_use_model_card_defaults(name):
    api = H.load_api_workflow(name)
    sampler = next(v["inputs"] for v in api.values() if v["class_type"] in ("KSampler", "HDMSampler"))
    assert 2.0 <= sampler["cfg"] <= 4.0 and 16 <= sampler["steps"] <= 32
    latent = next((v["inputs"] for v in api.values() if v["class_type"] == "EmptyLatentImage"), None)
    if latent is None:  # img2img/inpainting: the size is the loaded picture's
        assert any(v["class_type"] == "LoadImage" for v in api.values()), f"{name}: no EmptyLatentImage and no LoadImage"
    else:
        assert (latent["width"], latent["height"]) in {(1024, 1024), (1280, 960), (1440, 800), (960, 1280), (800, 1440)}
    loader = next(v["inputs"] for v in api.values() if v["class_type"] == "HDMCheckpointLoader")
    assert loader == {"ckpt_name": H.CKPT_NAME, "text_encoder": H.TE_NAME}
    for tipo in (v["inputs"] for v in api.values() if v["class_type"] == "HDMTipoPrompt"):
        assert (tipo["width"], tipo["height"]) == (latent["width"], latent["height"]), "TIPO is told another aspect ratio than the image has"


def test_rarely_changed_options_are_advanced_where_the_host_has_the_flag(cui):
    """v0.33 draws "advanced" widgets only on request; they keep their slot, so saved widgets_values still fit."""
    import inspect

    from comfy_api.latest import io

    supported = "advanced" in inspect.signature(io.Int.Input.__init__).parameters
    for node_id, advanced, basic in (
        ("HDMTrainLyCORIS", {"lokr_factor", "exclude", "precision", "tread_rate"}, {"algorithm", "rank", "alpha", "steps", "learning_rate", "save_name"}),
        ("HDMTipoPrompt", {"temperature", "top_p", "max_new_tokens"}, {"tags", "nl_prompt", "model", "tag_length", "seed"}),
    ):
        spec = input_spec(cui.nodes.NODE_CLASS_MAPPINGS[node_id])
        flagged = {name for name, definition in spec.items() if len(definition) > 1 and definition[1].get("advanced")}
        if cui.nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"].get("algorithm", [None])[0] == "COMFY_DYNAMICCOMBO_V3":
            advanced = advanced - {"lokr_factor"}  # shown only for lokr, where it matters
        if supported:
            assert advanced <= flagged and not basic & flagged, (node_id, flagged)
        else:
            assert flagged == set(), (node_id, flagged)
