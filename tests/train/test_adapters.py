"""Adapter targets, patching discipline, LyCORIS global state, file format."""

from __future__ import annotations

import json

import pytest
import torch

from hdm_core.train import AdapterConfig, AdapterError, create_adapter, load_adapter, read_adapter, save_adapter
from hdm_core.train.adapters import select_modules


def _out(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 3, 16, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([0.4]), ctx, tread_rate=0.0)


def _nudge(adapter, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_target_presets(tiny_model):
    attn = select_modules(tiny_model, AdapterConfig(algo="lora", preset="attn"))
    assert len(attn) == 13 and all(p.endswith((".qkv", ".out", ".q", ".kv")) for p in attn)
    assert "backbone.dec_blocks.0.0.xattn.kv" in attn and "prev_tread_trns.blocks.0.attn.qkv" in attn
    attn_mlp = select_modules(tiny_model, AdapterConfig(algo="lora", preset="attn-mlp"))
    assert len(attn_mlp) == 23 and "post_tread_trns.blocks.0.mlp.w3" in attn_mlp
    full_lora = select_modules(tiny_model, AdapterConfig(algo="lora", preset="full"))
    assert len(full_lora) == 34 and "in_patch.proj" not in full_lora  # LoRA: linear layers only
    full = select_modules(tiny_model, AdapterConfig(algo="locon", preset="full"))
    assert len(full) == 35 and "in_patch.proj" in full and "time_emb.proj.0" in full
    norms = select_modules(tiny_model, AdapterConfig(algo="lokr", preset="attn", train_norm=True))
    assert {"shared_adaln_attn.0", "shared_adaln_xattn.0", "shared_adaln_ffw.0"} <= set(norms) and len(norms) == 16
    tweaked = select_modules(
        tiny_model,
        AdapterConfig(algo="lora", preset="attn", include=[r"out_patch\.proj"], exclude=[r"(prev|post)_tread_trns\..*"]),
    )
    assert "out_patch.proj" in tweaked and not any("tread" in p for p in tweaked) and len(tweaked) == 13 - 4 + 1


def test_bad_adapter_settings_are_refused_with_reasons(tiny_model):
    with pytest.raises(AdapterError, match="'dylora' is not offered: stock ComfyUI loads DyLoRA files as plain LoRA"):
        AdapterConfig(algo="dylora")
    with pytest.raises(AdapterError, match="'ia3' is not offered"):
        AdapterConfig(algo="ia3")
    with pytest.raises(AdapterError, match="unknown adapter algorithm 'lycoris'"):
        AdapterConfig(algo="lycoris")
    with pytest.raises(AdapterError, match="diag-oft with rescaled=true is refused"):
        AdapterConfig(algo="diag-oft", rescaled=True)
    with pytest.raises(AdapterError, match="weight_decompose .* not 'glora'"):
        AdapterConfig(algo="glora", weight_decompose=True)
    with pytest.raises(AdapterError, match="unknown adapter option\\(s\\): rank"):
        AdapterConfig.from_dict({"rank": 4})
    with pytest.raises(AdapterError, match="exclude pattern 'backbone.encoder.*' matches no module; module paths look like"):
        select_modules(tiny_model, AdapterConfig(exclude=["backbone.encoder.*"]))
    with pytest.raises(AdapterError, match="matches only modules that cannot carry an adapter \\(RMSNorm\\)"):
        select_modules(tiny_model, AdapterConfig(include=[r".*attn_pre_norm\.norm"]))
    with pytest.raises(AdapterError, match="leave no layer to train"):
        select_modules(tiny_model, AdapterConfig(preset="attn", exclude=[".*"]))
    with pytest.raises(AdapterError, match="BOFT needs every adapted layer's output size"):
        create_adapter(tiny_model, AdapterConfig(algo="boft", dim=3))


def test_creation_leaves_lycoris_global_state_and_the_model_alone(tiny_model):
    from lycoris.wrapper import LycorisNetwork

    from hdm_core.train.adapters import _LYCORIS_CLASS_STATE

    before = {n: getattr(LycorisNetwork, n) for n in _LYCORIS_CLASS_STATE}
    base = _out(tiny_model)
    adapter = create_adapter(tiny_model, AdapterConfig(algo="lokr", factor=4, preset="full"), seed=3)
    assert {n: getattr(LycorisNetwork, n) for n in _LYCORIS_CLASS_STATE} == before
    assert LycorisNetwork.LORA_PREFIX == "lycoris"
    _nudge(adapter)
    assert torch.equal(_out(tiny_model), base)  # built, not applied
    with adapter.patched():
        changed = _out(tiny_model)
        with adapter.patched():  # nesting keeps it applied
            assert torch.equal(_out(tiny_model), changed)
        assert torch.equal(_out(tiny_model), changed)
    assert not torch.allclose(changed, base)
    assert torch.equal(_out(tiny_model), base)
    assert not any("forward" in m.__dict__ for m in tiny_model.modules())
    twin = create_adapter(tiny_model, AdapterConfig(algo="lokr", factor=4, preset="full"), seed=3)
    other = create_adapter(tiny_model, AdapterConfig(algo="lokr", factor=4, preset="full"), seed=4)
    first = {n: p for n, p in create_adapter(tiny_model, AdapterConfig(algo="lokr", factor=4, preset="full"), seed=3).trainable_parameters()}
    assert all(torch.equal(first[n], p) for n, p in twin.trainable_parameters())
    assert any(not torch.equal(first[n], p) for n, p in other.trainable_parameters())


def test_patching_is_restored_when_the_forward_fails(tiny_model):
    adapter = create_adapter(tiny_model, AdapterConfig(algo="lora"))
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.patched():
            raise RuntimeError("boom")
    assert not adapter.applied and not any("forward" in m.__dict__ for m in tiny_model.modules())


def test_full_keeps_the_layer_parameters_in_place(tiny_model):
    weight, bias = tiny_model.ctx_proj.weight, tiny_model.ctx_proj.bias
    base = _out(tiny_model)
    adapter = create_adapter(tiny_model, AdapterConfig(algo="full", preset="full"))
    _nudge(adapter)
    for _ in range(2):  # re-applying works (LyCORIS' FullModule cannot do this)
        with adapter.patched():
            assert tiny_model.ctx_proj.weight is weight
            assert not torch.allclose(_out(tiny_model), base)
        assert torch.equal(_out(tiny_model), base)
    assert tiny_model.ctx_proj.weight is weight and tiny_model.ctx_proj.bias is bias and not weight.requires_grad is None
    assert sorted(adapter.export_tensors())[:2] == ["lora_unet_addon_info_embs_proj_0.diff", "lora_unet_addon_info_embs_proj_0.diff_b"]


def test_saved_file_format_and_metadata(tiny_model, tmp_path):
    cfg = AdapterConfig(algo="dora", dim=4, alpha=2.0, preset="attn")
    adapter = create_adapter(tiny_model, cfg, seed=0)
    _nudge(adapter)
    path = save_adapter(adapter, tmp_path / "a.safetensors", dtype=torch.bfloat16, metadata={"ss_steps": 12})
    file = read_adapter(path)
    assert set(file.tensors) == {
        f"lora_unet_{p.replace('.', '_')}.{s}"
        for p in adapter.module_paths
        for s in ("alpha", "dora_scale", "lora_down.weight", "lora_up.weight")
    }
    assert file.tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.lora_up.weight"].dtype == torch.bfloat16
    assert file.tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.alpha"].dtype == torch.float32
    assert file.tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.alpha"].shape == ()
    assert file.tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.dora_scale"].shape == (1, 32)  # wd on input
    meta = file.metadata
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_network_dim"] == "4" and meta["ss_steps"] == "12"
    assert json.loads(meta["ss_network_args"])["wd_on_output"] is False
    assert file.config == cfg and meta["ss_base_model_version"] == "hdm_xut"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(AdapterError, match="saved as .safetensors"):
        save_adapter(adapter, tmp_path / "a.pt")


def test_fp32_files_reload_exactly_and_mismatches_are_explained(tiny_model, tmp_path):
    for use_scalar in (False, True):
        cfg = AdapterConfig(algo="loha", dim=4, preset="attn-mlp", use_scalar=use_scalar)
        adapter = create_adapter(tiny_model, cfg)
        _nudge(adapter)
        with adapter.patched():
            want = _out(tiny_model)
        path = save_adapter(adapter, tmp_path / "a.safetensors")
        again = load_adapter(tiny_model, path)
        with again.patched():
            got = _out(tiny_model)
        if use_scalar:  # the file holds w·scalar (scalar reset to 1 on load): rounding only
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5) and not torch.equal(got, want)
        else:
            assert torch.equal(got, want)
    other = create_adapter(tiny_model, AdapterConfig(algo="loha", dim=4, preset="attn"))
    with pytest.raises(AdapterError, match=r"does not fit this adapter configuration \(loha, preset attn\): 50 unexpected keys"):
        other.load_exported(read_adapter(path).tensors, source="a.safetensors")


def test_hdm_finetune_recipe_reproduces_the_reference_adapter_layout(fixtures_dir):
    """preset full + train_norm + LoKr factor 4 full_matrix on the released 343M layout (meta device)
    = exactly the keys, shapes and parameter count HDM's own trainer created (lycoris_lokr_manifest.json)."""
    from hdm_core import HDM_XUT_SMALL, XUT
    from hdm_core.train.adapters import rename_hdm_key

    with torch.device("meta"):
        full = XUT(HDM_XUT_SMALL, device="meta")
    cfg = AdapterConfig(algo="lokr", factor=4, full_matrix=True, train_norm=True, preset="full", dim=4, alpha=1.0)
    adapter = create_adapter(full, cfg, device="cpu")
    manifest = json.loads((fixtures_dir / "lycoris_lokr_manifest.json").read_text())
    ours = {k: list(v.shape) for k, v in adapter.export_tensors().items()}
    theirs = {rename_hdm_key(e["key"]): e["shape"] for e in manifest["state_dict"]}
    assert ours == theirs
    assert sum(p.numel() for _, p in adapter.trainable_parameters()) == manifest["trainable_parameters"] == 21_443_432
