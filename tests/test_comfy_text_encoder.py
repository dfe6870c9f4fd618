"""HDM's Qwen3-0.6B text encoder inside ComfyUI's CLIP object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


@pytest.fixture(scope="module")
def clip(cui):
    clip, report = cui.hdm.loaders.load_hdm_text_encoder(str(cui.model_path("text_encoders", H.TE_NAME)))
    assert not report.problems()
    return clip


def encode(clip, text, bracket_mode="danbooru"):
    (cond,) = clip_encode_node(clip, text, bracket_mode)
    assert len(cond) == 1
    return cond[0][0]


def clip_encode_node(clip, text, bracket_mode):
    import nodes  # ComfyUI's

    cls = nodes.NODE_CLASS_MAPPINGS["HDMTextEncode"]
    return cls.execute(clip, text, bracket_mode).result


def hf_reference(cui, ids: list[int]) -> torch.Tensor:
    """transformers' Qwen3Model on the same weights: last_hidden_state (after the final norm).

    ComfyUI stores text encoders in fp16 by default and computes in fp32; the reference gets
    the same fp16-rounded weights and runs in fp32.
    """
    transformers = pytest.importorskip("transformers")
    c = H.TINY_QWEN3
    config = transformers.Qwen3Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"], rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=True,
    )
    model = transformers.Qwen3Model(config).eval()
    missing, unexpected = model.load_state_dict({k[len("model."):]: v.half().float() for k, v in cui.te_sd.items()}, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state


def qwen_ids(text: str) -> list[int]:
    """HDM's tokenisation: the Qwen tokenizer, no special tokens added."""
    import comfy.text_encoders.llama
    from transformers import Qwen2Tokenizer

    path = Path(comfy.text_encoders.llama.__file__).parent / "qwen25_tokenizer"
    return Qwen2Tokenizer.from_pretrained(str(path))(text, add_special_tokens=False)["input_ids"]


def test_encoding_matches_transformers_qwen3(cui, clip):
    text = "1girl, solo, smile, looking at viewer, a detailed anime illustration"
    got = encode(clip, text, "comfy")
    ids = qwen_ids(text)
    assert got.shape == (1, len(ids), H.TE_HIDDEN)
    torch.testing.assert_close(got, hf_reference(cui, ids), rtol=1e-4, atol=1e-4)


def test_empty_prompt_gives_zero_tokens(clip):
    assert encode(clip, "").shape == (1, 0, H.TE_HIDDEN)
    assert encode(clip, "", "comfy").shape == (1, 0, H.TE_HIDDEN)


def test_danbooru_mode_keeps_tag_brackets_literal(cui, clip):
    text = "1girl, izuna (blue archive), smile"
    got = encode(clip, text, "danbooru")
    ids = qwen_ids(text)  # the brackets reach the model as text
    torch.testing.assert_close(got, hf_reference(cui, ids), rtol=1e-4, atol=1e-4)
    # comfy mode with the backslash rule gives the same; without it the brackets vanish into a weight.
    torch.testing.assert_close(encode(clip, r"1girl, izuna \(blue archive\), smile", "comfy"), got, rtol=0, atol=0)
    # Already-escaped brackets are not escaped twice in danbooru mode.
    torch.testing.assert_close(encode(clip, r"1girl, izuna \(blue archive\), smile", "danbooru"), got, rtol=0, atol=0)
    stock = encode(clip, text, "comfy")
    assert stock.shape[1] != got.shape[1] or not torch.allclose(stock, got)


def test_explicit_weights_still_weight_in_danbooru_mode(clip):
    # Same segmentation (ComfyUI tokenizes weight groups separately), only the weight differs.
    plain = encode(clip, "1girl, (smile:1.0), izuna (blue archive)", "danbooru")
    weighted = encode(clip, "1girl, (smile:1.5), izuna (blue archive)", "danbooru")
    assert weighted.shape == plain.shape
    diff = (weighted - plain).abs().amax(dim=-1)[0]
    assert (diff > 1e-4).any(), "the explicit weight did nothing"
    assert (diff < 1e-6).any(), "tokens outside the weight group changed"


def test_text_encoder_layouts_load_identically(cui, clip):
    """HF layout with and without 'model.', trainer layout 'te.text_models.0.', and a sharded download."""
    L = cui.hdm.loaders
    folder = cui.models / "text_encoders"
    ref = encode(clip, "1girl, smile")
    bare = H.save({k[len("model."):]: v for k, v in cui.te_sd.items()}, folder / "qwen3-bare.safetensors")
    trainer = H.save({"te.text_models.0." + k[len("model."):]: v for k, v in cui.te_sd.items()}, folder / "qwen3-trainer.safetensors")
    with_head = H.save({**cui.te_sd, "lm_head.weight": cui.te_sd["model.embed_tokens.weight"].clone()}, folder / "qwen3-lmhead.safetensors")
    shard_dir = folder / "Qwen3-0.6B"
    keys = sorted(cui.te_sd)
    half = len(keys) // 2
    H.save({k: cui.te_sd[k] for k in keys[:half]}, shard_dir / "model-00001-of-00002.safetensors")
    H.save({k: cui.te_sd[k] for k in keys[half:]}, shard_dir / "model-00002-of-00002.safetensors")
    import json

    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors") for i, k in enumerate(keys)}}))
    for path in (bare, trainer, with_head, shard_dir / "model-00002-of-00002.safetensors"):
        other, report = L.load_hdm_text_encoder(str(path))
        assert not report.problems(), path
        torch.testing.assert_close(encode(other, "1girl, smile"), ref, rtol=0, atol=0)


def test_native_comfy_qwen3_is_used_when_present_and_fallback_agrees(cui, clip):
    te = cui.hdm.text_encoder
    inner = clip.cond_stage_model.qwen3_06b.transformer
    native = te.native_qwen3_class()
    if native is None:  # older ComfyUI: the pack's own definition
        assert type(inner) is te.Qwen3TextModel
        return
    assert type(inner) is native[0]
    config = te.qwen3_config_from_shapes({k: list(v.shape) for k, v in cui.te_sd.items()}, "model.")
    fallback = te.HDMTextEncoderModel(dtype=torch.float16, qwen3_config=config, force_fallback=True)  # as ComfyUI stores it
    assert type(fallback.qwen3_06b.transformer) is te.Qwen3TextModel
    sd = {te.COMFY_TE_PREFIX + k[len("model."):]: v for k, v in cui.te_sd.items()}
    missing, unexpected = fallback.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("logit_scale") for k in missing)
    tokens = clip.tokenize("1girl, smile")
    torch.testing.assert_close(fallback.encode_token_weights(tokens)[0], clip.cond_stage_model.encode_token_weights(tokens)[0], rtol=1e-5, atol=1e-5)


def test_clip_is_a_comfy_clip_with_patcher_and_rebuild_factory(cui, clip):
    import comfy.model_patcher
    import comfy.sd

    assert isinstance(clip, comfy.sd.CLIP)
    assert isinstance(clip.patcher, comfy.model_patcher.ModelPatcher)
    loader = cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncoderLoader"]
    (from_node,) = loader.execute(H.TE_NAME).result
    fn, args = from_node.patcher.cached_patcher_init
    rebuilt = fn(*args, disable_dynamic=True)
    assert isinstance(rebuilt, comfy.model_patcher.ModelPatcher)
    torch.testing.assert_close(encode(from_node, "1girl"), encode(clip, "1girl"), rtol=0, atol=0)
