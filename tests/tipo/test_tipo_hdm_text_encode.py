"""HDM TIPO Prompt feeding HDM Text Encode inside a real ComfyUI (the shipped TIPO workflow).

The TIPO model is the tiny random LLaMA of ``conftest.py`` (copied into the harness's
``models/tipo``), the text encoder the harness's tiny Qwen3 in bf16. The conditioning HDM Text
Encode (danbooru mode) makes of TIPO's prompt must equal ``hdm_core``'s encoding of the plain,
unescaped prompt: every bracket reaches Qwen3 as a literal bracket, exactly once — not read as
a weight, not doubled, and no backslash left over.
"""

from __future__ import annotations

import shutil

import pytest
import torch

TAGS = "1girl, izuna (blue archive), fox ears"
NL = "A girl (smiling) in a shrine."
TIPO_NAME = "tiny-tipo"

import hdm_comfy_harness as H  # registered by tests/conftest.py


@pytest.fixture(scope="module")
def cui(comfyui_path, tiny_tipo_dir):
    cui = H.get_comfy(comfyui_path)
    target = cui.models / "tipo" / TIPO_NAME
    if not target.exists():
        shutil.copytree(tiny_tipo_dir, target)
    cui.shared = cui.write_shared_models()
    return cui


@pytest.fixture(scope="module")
def hdm_te(cui):
    from hdm_core.text import TextEncoder

    return TextEncoder.from_file(cui.shared["te"], dtype=torch.float32)


def tipo_workflow(cui, *, escape: bool, seed: int = 3) -> dict:
    """The shipped TIPO workflow at test size: tiny TIPO settings, the shared files, 64 px, 2 steps."""
    prompt = H.shrink(H.load_api_workflow("hdm_tipo"), steps=2)
    tipo = prompt[H.find_node(prompt, "HDMTipoPrompt")]["inputs"]
    tipo.update(
        tags=TAGS, nl_prompt=NL, model=TIPO_NAME, tag_length="very_short", nl_length="very_short", seed=seed, device="cpu",
        max_retry=0, max_new_tokens=16, length_check=False, escape_brackets=escape, width=64, height=64,
    )
    prompt[H.find_node(prompt, "HDMCheckpointLoader")]["inputs"].update(ckpt_name=cui.shared["ckpt"].name, text_encoder=cui.shared["te"].name)
    return prompt


def run(cui, prompt):
    tipo = H.find_node(prompt, "HDMTipoPrompt")
    sampler = H.find_node(prompt, "HDMSampler")
    positive = prompt[H.find_node(prompt, "HDMTreadGuidance")]["inputs"]["positive"][0]
    capture = {"prompt": (tipo, 0), "plain": (tipo, 1), "cond": (positive, 0), "image": (H.find_node(prompt, "HDMVAEDecode"), 0), "latent": (sampler, 0)}
    result = cui.run(prompt, capture)
    assert result.validation[0], result.validation
    assert result.ok, result.error()
    return result.outputs


@pytest.mark.parametrize("escape", [True, False], ids=["escaped", "plain-brackets"])
def test_tipo_prompt_reaches_the_model_as_literal_text(cui, hdm_te, escape):
    out = run(cui, tipo_workflow(cui, escape=escape))
    plain, text = out["plain"], out["prompt"]
    assert "izuna (blue archive)" in plain and "(smiling)" in plain, plain
    if escape:
        assert r"izuna \(blue archive\)" in text and r"\(smiling\)" in text and text.replace("\\(", "(").replace("\\)", ")") == plain
    else:
        assert text == plain

    # The tokens ComfyUI built are the literal prompt's tokens, all at weight 1.
    clip = cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncoderLoader"].execute(cui.shared["te"].name).result[0]
    prepared = cui.hdm.conditioning.prepare_prompt(text, "danbooru")
    pairs = [pair for batch in next(iter(clip.tokenize(prepared).values())) for pair in batch]
    ids, _ = hdm_te.tokenize([plain])
    assert [int(p[0]) for p in pairs] == ids[0].tolist()
    assert {float(p[1]) for p in pairs} == {1.0}

    # ... and the conditioning is hdm_core's encoding of the literal prompt.
    cond = out["cond"]
    assert len(cond) == 1
    ref = hdm_te.encode([plain]).float()
    torch.testing.assert_close(cond[0][0].float(), ref, rtol=1e-5, atol=2e-5)
    # (the same text through stock parsing loses its brackets to weights: the check above can fail)
    stock = cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncode"].execute(clip, plain, "comfy").result[0][0][0]
    assert stock.shape != ref.shape or not torch.allclose(stock.float(), ref, rtol=1e-5, atol=2e-5)

    assert out["image"].shape == (1, 64, 64, 3) and torch.isfinite(out["image"]).all()


def test_tipo_workflow_is_reproducible_and_the_seed_matters(cui):
    a = run(cui, tipo_workflow(cui, escape=True, seed=3))
    b = run(cui, tipo_workflow(cui, escape=True, seed=3))
    assert a["prompt"] == b["prompt"] and torch.equal(a["image"], b["image"])
    c = run(cui, tipo_workflow(cui, escape=True, seed=4))
    assert c["prompt"] != a["prompt"]
