"""The TIPO nodes inside a real ComfyUI: the pack loaded as ComfyUI loads it, an API workflow run by
ComfyUI's executor, and the prompt fed to the stock CLIPTextEncode, whose tokenizer must read
every literal bracket as text and keep the user's weight.

A tiny CLIP text encoder (random weights, ComfyUI's own SD1 tokenizer) is built by a test-only
node; the TIPO model is the tiny random LLaMA from ``conftest.py`` in a temporary ``tipo``
model folder. Nothing is written into the ComfyUI checkout.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TAGS = "1girl, izuna \\(blue archive\\), (smile:1.2), fox ears"
NL = "A girl (smiling) in a shrine."


class _TinyClipLoader:
    """Test-only: a real comfy.sd.CLIP with a 2-layer random CLIP-L-shaped encoder and the SD1 tokenizer."""

    CATEGORY = "_test"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import comfy.sd
        import comfy.sd1_clip

        config = json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text())
        config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32)
        target = types.SimpleNamespace(
            params={"clip_model": comfy.sd1_clip.SDClipModel, "textmodel_json_config": config},
            clip=comfy.sd1_clip.SD1ClipModel,
            tokenizer=comfy.sd1_clip.SD1Tokenizer,
        )
        clip = comfy.sd.CLIP(target=target)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in clip.cond_stage_model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        _Capture.clips.append(clip)
        return (clip,)


class _Capture:
    """Test-only output node: keeps what it receives."""

    CATEGORY = "_test"
    FUNCTION = "capture"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    seen: list[dict] = []
    clips: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {k: ("*",) for k in ("cond_a", "cond_b", "text_a", "plain_a", "cats_a", "text_b", "cats_b")}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def capture(self, **kwargs):
        _Capture.seen.append(kwargs)
        return {}


class _Server:
    """The bits of ComfyUI's PromptServer the executor touches."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@pytest.fixture(scope="module")
def comfy(comfyui_path, tiny_tipo_dir):
    import execution
    import folder_paths
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(REPO))) is True
    assert {"HDMTipoPrompt", "HDMPromptFormat"} <= set(nodes.NODE_CLASS_MAPPINGS)
    saved = {k: list(v[0]) for k, v in folder_paths.folder_names_and_paths.items() if k == "tipo"}
    folder_paths.add_model_folder_path("tipo", str(tiny_tipo_dir.parent))
    nodes.NODE_CLASS_MAPPINGS.update(_TestTinyCLIP=_TinyClipLoader, _TestCapture=_Capture)
    yield types.SimpleNamespace(nodes=nodes, execution=execution, folder_paths=folder_paths)
    for name in ("_TestTinyCLIP", "_TestCapture"):
        nodes.NODE_CLASS_MAPPINGS.pop(name, None)
    folder_paths.folder_names_and_paths["tipo"][0][:] = saved.get("tipo", [])


def _run(comfy, prompt: dict) -> tuple[bool, list]:
    valid = asyncio.run(comfy.execution.validate_prompt("test", prompt, None))
    assert valid[0], valid[1:]
    server = _Server()
    execution = comfy.execution
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:  # v0.33
        executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    else:  # v0.3.x
        executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)
    _Capture.seen.clear()
    executor.execute(prompt, "test", {}, valid[2])
    return executor.success, executor.status_messages


def _tipo_inputs(**overrides):
    inputs = {
        "tags": TAGS, "nl_prompt": NL, "ban_tags": "", "model": "tiny-tipo", "format": "<|special|>, <|characters|>, <|general|>, <|extended|>.",
        "tag_length": "very_short", "nl_length": "very_short", "width": 1024, "height": 768, "temperature": 0.5, "top_p": 0.95,
        "top_k": 80, "min_p": 0.05, "seed": 42, "device": "cpu", "max_retry": 0, "max_new_tokens": 16, "length_check": False,
        "escape_brackets": True,
    }  # fmt: skip
    inputs.update(overrides)
    return inputs


def _model_options(node) -> list:
    """The model list(s) a user picks from: the flat ``model`` combo, or each backend's (DynamicCombo hosts)."""
    spec = node.INPUT_TYPES()
    if "model" in spec["required"]:
        return spec["required"]["model"][1]["options"]
    return [name for option in spec["optional"]["backend"][1]["options"] for name in option["inputs"]["optional"]["model"][1]["options"]]


def test_node_definitions(comfy):
    tipo_node = comfy.nodes.NODE_CLASS_MAPPINGS["HDMTipoPrompt"]
    format_node = comfy.nodes.NODE_CLASS_MAPPINGS["HDMPromptFormat"]
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["HDMTipoPrompt"] == "HDM TIPO Prompt"
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["HDMPromptFormat"] == "HDM Prompt Format"
    for node in (tipo_node, format_node):
        assert node.CATEGORY == "HDM" and tuple(node.RETURN_NAMES) == ("prompt", "prompt_unescaped", "categories")
        for name, spec in node.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), f"{node.__name__}.{name} has no tooltip"
    assert "tiny-tipo" in _model_options(tipo_node)
    assert comfy.folder_paths.get_folder_paths("tipo")[0].endswith("tipo")  # models/tipo registered first


def test_workflow_feeds_clip_text_encode(comfy):
    prompt = {
        "1": {"class_type": "HDMTipoPrompt", "inputs": _tipo_inputs()},
        "2": {"class_type": "_TestTinyCLIP", "inputs": {}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["1", 0], "clip": ["2", 0]}},
        "4": {"class_type": "HDMPromptFormat", "inputs": {"tags": "fox ears, 1girl, (izuna \\(blue archive\\):1.1), solo", "nl_prompt": NL, "format": "<|special|>, <|characters|>, <|general|>, <|extended|>.", "escape_brackets": True}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ["4", 0], "clip": ["2", 0]}},
        "6": {"class_type": "_TestCapture", "inputs": {"cond_a": ["3", 0], "cond_b": ["5", 0], "text_a": ["1", 0], "plain_a": ["1", 1], "cats_a": ["1", 2], "text_b": ["4", 0], "cats_b": ["4", 2]}},
    }  # fmt: skip
    ok, messages = _run(comfy, prompt)
    assert ok, messages
    (seen,) = _Capture.seen
    assert seen["text_b"] == "1girl, (izuna \\(blue archive\\):1.1), fox ears, solo, A girl \\(smiling\\) in a shrine."
    assert json.loads(seen["cats_b"])["characters"] == ["(izuna (blue archive):1.1)"]
    text = seen["text_a"]
    assert text.startswith("1girl, izuna \\(blue archive\\)") and "(smile:1.2)" in text and "A girl \\(smiling\\) in a shrine" in text
    assert seen["plain_a"] == text.replace("\\(", "(").replace("\\)", ")")
    cats = json.loads(seen["cats_a"])
    assert cats["special"] == ["1girl"] and cats["general"][:2] == ["(smile:1.2)", "fox ears"]
    for cond in (seen["cond_a"], seen["cond_b"]):
        assert cond[0][0].shape[-1] == 32 and torch.isfinite(cond[0][0]).all()

    # ComfyUI's own tokenizer reads our prompts: brackets are text, only the user's weights are weights
    clip = _Capture.clips[-1]
    weights_a = {round(w, 4) for batch in clip.tokenize(text)["l"] for _, w, *rest in batch}
    assert weights_a == {1.0, 1.2}  # (TIPO's text from a random model is gibberish, but never a weight)
    tokens_b = [(t, round(w, 4)) for batch in clip.tokenize(seen["text_b"])["l"] for t, w, *rest in batch]
    vocab = clip.tokenizer.clip_l.tokenizer.get_vocab()
    brackets = [w for t, w in tokens_b if t in (vocab["(</w>"], vocab[")</w>"])]
    assert brackets == [1.1, 1.1, 1.0, 1.0]  # izuna \(blue archive\) inside its weight, \(smiling\) plain
    assert {w for _, w in tokens_b} == {1.0, 1.1}

    # the same seed again: ComfyUI caches the node; a fresh executor recomputes the same prompt
    ok, _ = _run(comfy, prompt)
    assert ok and _Capture.seen[0]["text_a"] == text


def test_node_errors_reach_the_user(comfy, tmp_path):
    bad = {
        "1": {"class_type": "HDMTipoPrompt", "inputs": _tipo_inputs(format="<|tags|>")},
        "2": {"class_type": "_TestCapture", "inputs": {"text_a": ["1", 0]}},
    }
    # a template typo is refused when the prompt is queued (validate_inputs), before anything runs
    valid = asyncio.run(comfy.execution.validate_prompt("test", bad, None))
    assert not valid[0]
    details = [e["details"] for err in valid[3].values() for e in err["errors"]]
    assert any("unknown placeholder(s) in the format template: <|tags|>" in d for d in details), valid
    # and the same message if the node runs anyway (a template from a linked string is known only then)
    with pytest.raises(Exception, match=r"unknown placeholder\(s\) in the format template: <\|tags\|>"):
        comfy.nodes.NODE_CLASS_MAPPINGS["HDMTipoPrompt"].execute(**_tipo_inputs(format="<|tags|>"))

    # no model at all: the combo shows a placeholder, and running says where to put one
    node = comfy.nodes.NODE_CLASS_MAPPINGS["HDMTipoPrompt"]
    paths = comfy.folder_paths.folder_names_and_paths["tipo"][0]
    saved = list(paths)
    paths[:] = [str(tmp_path)]
    try:
        placeholders = (["(no TIPO model in models/tipo)"], ["(no TIPO model folder in models/tipo)", "(no .gguf TIPO model in models/tipo)"])
        assert _model_options(node) in placeholders  # (flat host, DynamicCombo host)
        # refused before the graph runs, with the message running it would give
        message = node.validate_inputs(model="(no TIPO model in models/tipo)", format="<|general|>")
        assert message.startswith(f"No TIPO model found in {tmp_path}. Download a TIPO model into it")
        with pytest.raises(Exception, match=f"No TIPO model found in {tmp_path}. Download a TIPO model into it"):
            node.execute(**_tipo_inputs(model="(no TIPO model in models/tipo)"))
    finally:
        paths[:] = saved
