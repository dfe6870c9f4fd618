"""load_xut: formats, prefixes, layouts, strictness, dtypes and every error message."""

from __future__ import annotations

import json
import math
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hdm_core import CheckpointError, HDM_XUT_SMALL, XUT, load_xut
from hdm_core.checkpoint import describe_state_dict, find_xut_prefix, infer_config, read_state_dict, save_safetensors


@pytest.fixture(scope="module")
def tiny_sd(fixtures_dir) -> dict[str, torch.Tensor]:
    """The fixture's XUT weights without their ``unet.model.`` prefix."""
    raw = load_file(str(fixtures_dir / "tiny_weights.safetensors"))
    return {k[len("unet.model."):]: v for k, v in raw.items()}


@pytest.fixture(scope="module")
def probe(fixtures_dir):
    c = load_file(str(fixtures_dir / "tiny_cases.safetensors"))
    return c["case_e.x"], c["case_e.t"], c["case_e.ctx"], c["case_e.addon"], c["case_e.out"]


def assert_reproduces(model, probe, atol=2e-4):
    x, t, ctx, addon, ref = probe
    with torch.no_grad():
        out = model(x.to(model.dtype), t, ctx.to(model.dtype), addon_info=addon)
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- sources and prefixes
@pytest.mark.parametrize("prefix", ["unet.model.", "model.diffusion_model.", "diffusion_model.", "model.", "", "some.wrapper."])
def test_prefixes(tmp_path, tiny_sd, probe, prefix):
    extra = {"vae.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3), "te.text_models.0.norm.weight": torch.ones(4)}
    sd = {prefix + k: v for k, v in tiny_sd.items()} | extra
    assert find_xut_prefix(sd) == prefix
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    model = load_xut(path)
    assert not model.training
    assert_reproduces(model, probe)


def test_state_dict_source(tiny_sd, probe):
    assert_reproduces(load_xut(dict(tiny_sd)), probe)


def test_diffusers_folders(tmp_path, tiny_sd, probe):
    wrapped = {"model." + k: v for k, v in tiny_sd.items()}
    single = tmp_path / "single" / "unet"
    single.mkdir(parents=True)
    save_file(wrapped, str(single / "diffusion_pytorch_model.safetensors"))
    (single / "config.json").write_text("{}")
    assert_reproduces(load_xut(tmp_path / "single"), probe)  # pipeline folder with unet/

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(wrapped)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: wrapped[k] for k in part}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_reproduces(load_xut(sharded), probe)

    (sharded / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard files listed .* are missing"):
        load_xut(sharded)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no model weights found.*notes\.txt"):
        load_xut(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_xut(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- dtypes
def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt() / b.float().std())


@pytest.mark.parametrize("file_dtype, compute_tol", [(torch.float16, 0.01), (torch.bfloat16, 0.05)])
def test_dtype_round_trip(tmp_path, tiny_sd, probe, file_dtype, compute_tol):
    half = {k: v.to(file_dtype) for k, v in tiny_sd.items()}
    path = tmp_path / "half.safetensors"
    save_file({"unet.model." + k: v for k, v in half.items()}, str(path))

    native = load_xut(path)
    assert native.dtype == file_dtype
    assert native.in_patch.proj.weight.dtype == file_dtype
    assert native.time_emb.freqs.dtype == torch.float32  # phases stay fp32 in a half model
    assert torch.equal(native.time_emb.freqs, half["time_emb.freqs"].float())

    m32 = load_xut(path, dtype=torch.float32)
    assert m32.dtype == torch.float32
    for k, v in m32.state_dict().items():
        assert torch.equal(v, half[k].float()), k  # exact widening, nothing re-rounded

    x, t, ctx, addon, _ = probe
    with torch.no_grad():
        wide = m32(x, t, ctx, addon_info=addon)
        low = native(x.to(file_dtype), t, ctx.to(file_dtype), addon_info=addon)
    assert low.dtype == file_dtype
    assert rel_rms(low, wide) < compute_tol  # half-precision math on the same weights

    out = tmp_path / "back.safetensors"
    save_safetensors({"unet.model." + k: v.to(file_dtype) for k, v in m32.state_dict().items()}, out)
    back = load_file(str(out))
    assert all(torch.equal(back["unet.model." + k], v) for k, v in half.items())


def test_time_freqs_kept_from_file_or_recomputed(tiny_sd, probe):
    rounded = dict(tiny_sd)
    rounded["time_emb.freqs"] = tiny_sd["time_emb.freqs"].half().float()
    m = load_xut(rounded)
    assert torch.equal(m.time_emb.freqs, rounded["time_emb.freqs"])
    assert not torch.equal(m.time_emb.freqs, tiny_sd["time_emb.freqs"])  # the fp16 rounding is kept

    without = {k: v for k, v in tiny_sd.items() if k != "time_emb.freqs"}
    m = load_xut(without)
    torch.testing.assert_close(m.time_emb.freqs, tiny_sd["time_emb.freqs"], atol=1e-7, rtol=0)
    assert_reproduces(m, probe)


# ----------------------------------------------------------------------------- full released layout
def test_full_released_layout_on_meta(fixtures_dir):
    """Every key and shape of the released 343M model, without allocating 1.4 GB."""
    manifest = json.loads((fixtures_dir / "full_manifest.json").read_text())["xudit"]
    shapes = {e["key"][len("unet.model."):]: e["shape"] for e in manifest["keys"]}
    assert len(shapes) == manifest["num_keys"] == 255
    assert infer_config(shapes) == HDM_XUT_SMALL

    with torch.device("meta"):
        model = XUT(HDM_XUT_SMALL, device="meta")
    built = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert built == shapes
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 343_176_208

    meta_sd = {"unet.model." + k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in shapes.items()}
    meta_sd["vae_mean"] = torch.empty(1, 4, 1, 1, device="meta")
    loaded = load_xut(meta_sd, device="meta")
    assert loaded.config == HDM_XUT_SMALL and loaded.dtype == torch.float16
    assert {k: list(v.shape) for k, v in loaded.state_dict().items()} == shapes


# ----------------------------------------------------------------------------- errors
def test_not_safetensors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_xut(junk)
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html>Rate limited</html>")
    with pytest.raises(CheckpointError, match="HTML file, not model weights"):
        load_xut(html)
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        load_xut(lfs)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(CheckpointError, match="GGUF"):
        load_xut(gguf)
    bad_json = tmp_path / "badjson.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        load_xut(bad_json)


def test_truncated(tmp_path, tiny_sd):
    path = tmp_path / "full.safetensors"
    save_file({"unet.model." + k: v for k, v in tiny_sd.items()}, str(path))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated.*download it again"):
        load_xut(cut)
    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_xut(header_cut)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_xut(empty)


def test_pickles_refused_by_default_and_loaded_safely_on_opt_in(tmp_path, tiny_sd, probe):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"unet.model." + k: v for k, v in tiny_sd.items()}}, str(ckpt))
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint.*allow_pickle=True"):
        load_xut(ckpt)
    assert_reproduces(load_xut(ckpt, allow_pickle=True), probe)

    disguised = tmp_path / "disguised.safetensors"  # pickle with a safetensors name
    disguised.write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointError, match="refusing to load a pickled checkpoint"):
        load_xut(disguised)
    assert_reproduces(load_xut(disguised, allow_pickle=True), probe)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True\\) refused or failed"):
        load_xut(evil, allow_pickle=True)


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight"], "SDXL UNet"),
        (["first_stage_model.decoder.conv_in.weight", "first_stage_model.encoder.down.0.block.0.conv1.weight"], "bare VAE"),
        (["decoder.up_blocks.0.resnets.0.conv1.weight", "decoder.conv_in.weight"], "bare VAE"),
        (["model.layers.0.self_attn.q_norm.weight", "model.embed_tokens.weight"], "Qwen3 text encoder"),
        (["lora_unet_backbone_enc_blocks_0_0_attn_qkv.lora_down.weight"], "LoRA/LyCORIS adapter"),
        (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "Flux"),
        (["foo.bar"], "none of them XUT keys"),
    ],
)
def test_no_xut_keys_says_what_the_file_is(tmp_path, keys, expected):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(CheckpointError, match=f"no HDM/XUT diffusion-model weights found; .*{expected}"):
        load_xut(path)
    assert expected in describe_state_dict(keys)


def test_missing_and_unexpected_keys(tiny_sd):
    sd = dict(tiny_sd)
    for k in ("backbone.dec_blocks.0.0.xattn.q.weight", "ctx_proj.bias", "out_patch.proj.bias"):
        del sd[k]
    sd["backbone.enc_blocks.0.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        load_xut(sd)
    msg = str(err.value)
    assert "3 missing keys" in msg and "ctx_proj.bias" in msg and "out_patch.proj.bias" in msg
    assert "1 unexpected keys" in msg and "attn.extra.weight" in msg


def test_shape_mismatch_names_the_tensor(tiny_sd):
    sd = dict(tiny_sd)
    sd["backbone.enc_blocks.1.0.mlp.w12.weight"] = torch.zeros(250, 64)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'backbone\.enc_blocks\.1\.0\.mlp\.w12\.weight': file has \[250, 64\], model expects \[256, 64\]"):
        load_xut(sd)


def test_uninferable_architecture(tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("ctx_proj.")}
    with pytest.raises(CheckpointError, match="cannot infer the XUT architecture: tensor 'ctx_proj.weight' is missing"):
        load_xut(sd)


def test_read_state_dict_is_lazy(tmp_path, tiny_sd):
    path = tmp_path / "m.safetensors"
    save_file({"unet.model." + k: v for k, v in tiny_sd.items()}, str(path), metadata={"modelspec.title": "tiny"})
    sd = read_state_dict(path)
    assert len(sd) == len(tiny_sd) and sd.metadata["modelspec.title"] == "tiny"
    assert sd.shape("unet.model.in_patch.proj.weight") == [64, 4, 2, 2]
    assert torch.equal(sd["unet.model.ctx_proj.bias"], tiny_sd["ctx_proj.bias"])


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.safetensors"
    save_safetensors({"a": torch.ones(2)}, target)
    before = target.read_bytes()

    import safetensors.torch as st

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"a": torch.zeros(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_aspect_math_uses_log(tiny_sd):
    """Sanity of the documented convention: addon = log(w/h) (positive for landscape)."""
    m = load_xut(tiny_sd)
    x = torch.randn(1, 4, 8, 16)
    with torch.no_grad():
        assert torch.equal(m(x, 0.5, torch.zeros(1, 2, 48)), m(x, 0.5, torch.zeros(1, 2, 48), addon_info=math.log(2.0)))
