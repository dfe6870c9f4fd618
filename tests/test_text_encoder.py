"""Qwen3 text encoder: tokenizer, loading layouts, HDM encoding rules, parity with
transformers and with ComfyUI's own Qwen3-0.6B implementation (tiny random weights)."""

from __future__ import annotations

import json

import pytest
import torch

from hdm_core.checkpoint import CheckpointError, save_safetensors
from hdm_core.testing import TINY_QWEN3, tiny_qwen3, tiny_xut
from hdm_core.text import (
    PAD_TOKEN_ID,
    QWEN3_CONFIG_FILE,
    TOKENIZER_DIR,
    TRAIN_MAX_TOKENS,
    TextEncoder,
    find_te_prefix,
    load_qwen3,
    load_tokenizer,
    make_qwen3_config,
)

PROMPTS = [
    "1girl, solo, long hair, looking at viewer",
    "a cat",
    "masterpiece, 猫耳, (smile:1.2)\nsecond line",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen3(seed=11)


@pytest.fixture(scope="module")
def state_dict(qwen):
    return {k: v.clone() for k, v in qwen.state_dict().items() if "rotary_emb" not in k}


@pytest.fixture(scope="module")
def encoder(qwen, tokenizer):
    return TextEncoder(qwen, tokenizer)


# --------------------------------------------------------------------------- tokenizer and config
def test_bundled_config_is_the_released_architecture(fixtures_dir):
    manifest = json.loads((fixtures_dir / "full_manifest.json").read_text())["text_encoder"]
    assert json.loads(QWEN3_CONFIG_FILE.read_text()) == manifest["config_used"]
    with torch.device("meta"):
        from transformers import Qwen3Model

        model = Qwen3Model(make_qwen3_config())
    shapes = {f"te.text_models.0.{k}": list(v.shape) for k, v in model.state_dict().items() if "rotary" not in k}
    assert shapes == {e["key"]: e["shape"] for e in manifest["keys"]}
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 596_049_920
    assert model.config.rope_parameters["rope_theta"] == 1e6


def test_bundled_tokenizer_ids_no_specials(tokenizer):
    assert (TOKENIZER_DIR / "NOTICE").is_file() and (TOKENIZER_DIR / "LICENSE").is_file()
    ids = tokenizer("1girl, solo, long hair", add_special_tokens=False)["input_ids"]
    assert ids == [16, 28552, 11, 13529, 11, 1293, 6869]
    # add_special_tokens=True changes nothing: Qwen3 adds no BOS/EOS
    assert tokenizer("1girl, solo, long hair")["input_ids"] == ids
    assert tokenizer("", add_special_tokens=False)["input_ids"] == []


def test_tokenize_pads_right_to_longest_without_truncation(encoder):
    long_prompt = ", ".join(["long hair"] * 200)  # ~600 tokens: no 256-token cap at inference
    ids, mask = encoder.tokenize(["a cat", long_prompt])
    assert ids.shape[1] == mask[1].sum() > 256
    assert mask[0].sum() == 2 and (ids[0, 2:] == PAD_TOKEN_ID).all() and (mask[0, 2:] == 0).all()
    ids, mask = encoder.tokenize(["", ""])
    assert ids.shape == mask.shape == (2, 0)


def test_training_tokenization_is_hdm_recipe(encoder, tokenizer):
    """HDM's training: 256 tokens, truncated, right-padded with <|endoftext|>, no specials."""
    assert TRAIN_MAX_TOKENS == 256 and PAD_TOKEN_ID == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    long_prompt = ", ".join(["long hair"] * 200)
    ids, mask = encoder.tokenize(["1girl, solo, long hair", "", long_prompt], max_length=TRAIN_MAX_TOKENS)
    assert ids.shape == mask.shape == (3, 256)
    assert ids[0, :7].tolist() == [16, 28552, 11, 13529, 11, 1293, 6869]
    assert (ids[0, 7:] == PAD_TOKEN_ID).all() and mask[0].tolist() == [1] * 7 + [0] * 249
    assert (ids[1] == PAD_TOKEN_ID).all() and mask[1].sum() == 0  # an empty caption: 256 pads
    full = tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(full) > 256 and ids[2].tolist() == full[:256] and mask[2].all()  # truncated, keeps the start
    assert encoder.tokenize("a cat", max_length=4)[0].tolist() == [[64, 8251, PAD_TOKEN_ID, PAD_TOKEN_ID]]
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        encoder.tokenize("a cat", max_length=0)


def test_training_encoding_masks_the_encoder_only(qwen, encoder):
    ids, mask = encoder.tokenize(PROMPTS + [""], max_length=TRAIN_MAX_TOKENS)
    with torch.no_grad():
        ref = qwen(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    ctx = encoder.encode(PROMPTS + [""], max_length=TRAIN_MAX_TOKENS)
    assert ctx.shape == (4, 256, TINY_QWEN3["hidden_size"]) and torch.isfinite(ctx).all()
    torch.testing.assert_close(ctx, ref, rtol=0, atol=0)
    # real tokens are what inference-style encoding gives; pad positions carry encoder output too
    alone = encoder.encode([PROMPTS[1]])
    n = alone.shape[1]
    torch.testing.assert_close(ctx[1, :n], alone[0], rtol=0, atol=2e-5)
    assert ctx[1, n:].abs().sum() > 0


def test_encode_each_gives_each_prompt_its_own_tokens(encoder):
    each = encoder.encode_each(PROMPTS + [""])
    assert [c.shape[0] for c in each] == [int(encoder.tokenize(p)[1].sum()) for p in PROMPTS] + [0]
    for p, c in zip(PROMPTS, each):
        torch.testing.assert_close(c, encoder.encode([p])[0], rtol=0, atol=2e-5)


def test_tokenizer_ids_match_comfyui_qwen_tokenizer(tokenizer, comfyui_path):
    from transformers import AutoTokenizer

    folder = comfyui_path / "comfy" / "text_encoders" / "qwen25_tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip("this ComfyUI has no qwen25_tokenizer")
    theirs = AutoTokenizer.from_pretrained(str(folder))
    for p in PROMPTS + ["<|endoftext|> tag", "  spaces   and\ttabs "]:
        assert tokenizer(p, add_special_tokens=False)["input_ids"] == theirs(p, add_special_tokens=False)["input_ids"], p


# --------------------------------------------------------------------------- encoding
def test_encode_equals_transformers_directly(qwen, encoder):
    ids, mask = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        ref = qwen(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    ctx = encoder.encode(PROMPTS)
    assert ctx.shape == (3, ids.shape[1], TINY_QWEN3["hidden_size"])
    assert torch.equal(ctx, ref)
    # the last hidden state is after the final RMSNorm (== hidden_states[-1])
    with torch.no_grad():
        hs = qwen(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hs[-1], ref, rtol=0, atol=0)


def test_padding_does_not_change_real_tokens(encoder):
    batch = encoder.encode(PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone = encoder.encode([p])
        n = alone.shape[1]
        torch.testing.assert_close(batch[i, :n], alone[0], rtol=0, atol=2e-5)


def test_empty_prompt_gives_zero_tokens_and_xut_accepts_it(encoder):
    ctx = encoder.encode("")
    assert ctx.shape == (1, 0, TINY_QWEN3["hidden_size"])
    xut = tiny_xut()
    out = xut(torch.randn(1, 4, 8, 8), torch.tensor([0.5]), ctx)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    # an empty prompt next to a real one: a fully padded, fully masked row, finite
    mixed = encoder.encode(["", "a cat"])
    assert mixed.shape[1] == 2 and torch.isfinite(mixed).all()


def test_encode_matches_comfyui_qwen3(state_dict, encoder, comfyui_path):
    import comfy.ops
    from comfy.text_encoders import llama

    if not hasattr(llama, "Qwen3_06B"):
        pytest.skip("this ComfyUI has no built-in Qwen3-0.6B (added after v0.3.64)")
    cfg = {k: v for k, v in TINY_QWEN3.items() if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                        "num_attention_heads", "num_key_value_heads")}
    assert TINY_QWEN3["head_dim"] == 128  # fixed in ComfyUI's config class
    theirs = llama.Qwen3_06B(cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    missing, unexpected = theirs.load_state_dict({f"model.{k}": v for k, v in state_dict.items()}, strict=False)
    assert not missing and not unexpected
    ids, mask = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        out = theirs(ids, attention_mask=mask, dtype=torch.float32)
    out = out[0] if isinstance(out, tuple) else out
    ours = encoder.encode(PROMPTS)
    for i in range(len(PROMPTS)):  # compare the real tokens (pad rows are masked out downstream)
        n = int(mask[i].sum())
        torch.testing.assert_close(ours[i, :n], out[i, :n].float(), rtol=0, atol=5e-5)


# --------------------------------------------------------------------------- loading layouts
def _encodings_equal(te_model, reference: TextEncoder):
    other = TextEncoder(te_model, reference.tokenizer)
    torch.testing.assert_close(other.encode(PROMPTS), reference.encode(PROMPTS), rtol=0, atol=0)


@pytest.mark.parametrize(
    "prefix", ["model.", "", "te.text_models.0.", "qwen3_06b.transformer.model.", "some.wrapper."]
)
def test_load_layouts(state_dict, encoder, prefix):
    sd = {prefix + k: v for k, v in state_dict.items()}
    if prefix == "model.":
        sd["lm_head.weight"] = state_dict["embed_tokens.weight"]  # Qwen3ForCausalLM files may carry it
    if prefix == "te.text_models.0.":
        sd["unet.model.in_patch.proj.weight"] = torch.zeros(2)  # an HDM trainer checkpoint holds more
    assert find_te_prefix(sd) == prefix
    model = load_qwen3(sd)
    assert model.config.num_hidden_layers == TINY_QWEN3["num_hidden_layers"]
    assert model.config.num_key_value_heads == TINY_QWEN3["num_key_value_heads"]
    _encodings_equal(model, encoder)


def test_load_hf_folder_single_and_sharded(tmp_path, state_dict, encoder):
    single = tmp_path / "single"
    save_safetensors({f"model.{k}": v for k, v in state_dict.items()}, single / "model.safetensors")
    (single / "config.json").write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **TINY_QWEN3}))
    _encodings_equal(load_qwen3(single), encoder)

    sharded = tmp_path / "sharded"
    keys = sorted(state_dict)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in halves.items():
        save_safetensors({f"model.{k}": state_dict[k] for k in part}, sharded / name)
        weight_map.update({f"model.{k}": name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _encodings_equal(load_qwen3(sharded), encoder)  # no config.json: bundled constants + shapes


def test_rope_theta_comes_from_folder_config(tmp_path, state_dict):
    folder = tmp_path / "te"
    save_safetensors({f"model.{k}": v for k, v in state_dict.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", **TINY_QWEN3, "rope_theta": 10000.0}))
    assert load_qwen3(folder).config.rope_parameters["rope_theta"] == 10000.0
    assert load_qwen3(folder / "model.safetensors", config=TINY_QWEN3).config.rope_parameters["rope_theta"] == 1e6


def test_low_precision_load_keeps_float32_rotary(state_dict):
    model = load_qwen3(state_dict, dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.rotary_emb.inv_freq.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())


def test_load_errors_are_readable(tmp_path, state_dict):
    broken = dict(state_dict)
    del broken["layers.1.mlp.down_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys.*layers\.1\.mlp\.down_proj\.weight"):
        load_qwen3(broken)
    bad_shape = dict(state_dict)
    bad_shape["norm.weight"] = torch.ones(7)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'norm\.weight'"):
        load_qwen3(bad_shape)
    vae_like = {"decoder.conv_in.weight": torch.zeros(1), "decoder.up_blocks.0.x": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"no Qwen3 text-encoder weights.*bare VAE.*Qwen/Qwen3-0\.6B"):
        load_qwen3(vae_like)
    with pytest.raises(CheckpointError, match="no such file"):
        load_qwen3(tmp_path / "nope.safetensors")
