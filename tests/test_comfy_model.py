"""The HDM model family as ComfyUI objects: latent format, config, conds, ops, attention, memory."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"hdm_bench_{name}", H.REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loaded(cui):
    model, clip, vae, report = cui.hdm.loaders.load_hdm_checkpoint(str(cui.model_path("checkpoints", H.CKPT_NAME)), str(cui.model_path("text_encoders", H.TE_NAME)))
    return model, clip, vae, report


def test_latent_format_is_hdm_core_normalisation(cui):
    from hdm_core import latents

    fmt = cui.hdm.model.HDMLatentFormat()
    assert fmt.latent_channels == 4 and fmt.scale_factor == 1.0 and fmt.taesd_decoder_name is None
    z = torch.randn(2, 4, 5, 6) * 8
    torch.testing.assert_close(fmt.process_in(z), latents.normalize(z), rtol=0, atol=0)
    torch.testing.assert_close(fmt.process_out(fmt.process_in(z)), z, rtol=1e-6, atol=1e-5)
    mean = torch.tensor(latents.LATENTS_MEAN).view(1, 4, 1, 1)
    torch.testing.assert_close(fmt.process_in(mean.expand(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2), rtol=0, atol=1e-6)


def test_preview_factors_are_sdxl_factors_carried_into_hdm_space(cui):
    """What the docstring claims: F' = 0.13025·std·F, b' = b + Σ 0.13025·mean·F (ComfyUI's SDXL F, b)."""
    import comfy.latent_formats
    from hdm_core import latents

    sdxl = comfy.latent_formats.SDXL()
    f = torch.tensor(sdxl.latent_rgb_factors)
    b = torch.tensor(sdxl.latent_rgb_factors_bias)
    k = sdxl.scale_factor
    expected_f = f * k * torch.tensor(latents.LATENTS_STD)[:, None]
    expected_b = b + (f * k * torch.tensor(latents.LATENTS_MEAN)[:, None]).sum(0)
    fmt = cui.hdm.model.HDMLatentFormat()
    torch.testing.assert_close(torch.tensor(fmt.latent_rgb_factors), expected_f, rtol=0, atol=6e-5)
    torch.testing.assert_close(torch.tensor(fmt.latent_rgb_factors_bias), expected_b, rtol=0, atol=6e-5)


def test_model_config_and_sampling(cui, loaded):
    import comfy.model_base
    import comfy.model_sampling

    model = loaded[0].model
    cfg = model.model_config
    assert isinstance(model, cui.hdm.model.HDMModel) and isinstance(model, comfy.model_base.BaseModel)
    assert model.model_type == comfy.model_base.ModelType.FLOW
    assert isinstance(model.model_sampling, comfy.model_sampling.CONST)
    assert float(model.model_sampling.multiplier) == 1.0 and float(model.model_sampling.shift) == 1.0
    assert float(model.model_sampling.sigma_max) == pytest.approx(1.0)
    assert set(cfg.supported_inference_dtypes) == {torch.float16, torch.bfloat16, torch.float32}
    assert cfg.unet_extra_config == {} and cfg.memory_usage_factor == 0.6
    assert isinstance(model.latent_format, cui.hdm.model.HDMLatentFormat)
    assert model.diffusion_model.dtype == model.get_dtype()
    assert not model.diffusion_model.training


def test_conditioning_types(cui, loaded):
    import comfy.conds

    model = loaded[0].model
    ctx = torch.randn(1, 7, H.TE_HIDDEN)
    conds = model.extra_conds(cross_attn=ctx, hdm_camera=(0.1, 0.2, 1.5), hdm_tread_gamma=0.5, seed=3, noise=torch.zeros(1, 4, 8, 8), device="cpu")
    assert type(conds["c_crossattn"]) is comfy.conds.CONDRegular  # never CONDCrossAttn's repeat-padding
    assert isinstance(conds["hdm_camera"], comfy.conds.CONDConstant) and conds["hdm_camera"].cond == (0.1, 0.2, 1.5)
    assert conds["hdm_tread_gamma"].cond == 0.5 and conds["hdm_seed"].cond == 3
    # Different prompt lengths never batch together (they would be padded otherwise).
    other = model.extra_conds(cross_attn=torch.randn(1, 3, H.TE_HIDDEN), noise=torch.zeros(1, 4, 8, 8), device="cpu")
    assert not conds["c_crossattn"].can_concat(other["c_crossattn"])
    assert not conds["hdm_camera"].can_concat(other["hdm_camera"]) and other["hdm_camera"].cond == (0.0, 0.0, 1.0)


def test_timestep_reaches_the_model_in_unit_range(cui, loaded):
    """Under the stock ModelSamplingSD3 (multiplier 1000) and AuraFlow (1) nodes alike, t = sigma."""
    import comfy_extras.nodes_model_advanced as adv

    patcher = loaded[0]
    dm = patcher.model.diffusion_model
    seen = []
    original = dm._forward

    def spy(x, timesteps, *args, **kwargs):
        seen.append(float(timesteps.reshape(-1)[0]))
        return original(x, timesteps, *args, **kwargs)

    variants = {
        "plain": patcher,
        "ModelSamplingSD3": adv.ModelSamplingSD3().patch(patcher, 3.0)[0],
        "ModelSamplingAuraFlow": adv.ModelSamplingAuraFlow().patch_aura(patcher, 3.0)[0],
    }
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, H.TE_HIDDEN)
    dm._forward = spy
    try:
        for name, m in variants.items():
            m.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=0, load_weights=True)
            try:
                multiplier = float(m.model.model_sampling.multiplier)
                with torch.no_grad():
                    m.model.apply_model(x, torch.tensor([0.75]), c_crossattn=ctx, hdm_camera=(0.0, 0.0, 1.0), hdm_tread_gamma=0.0, hdm_seed=0)
            finally:
                m.unpatch_model(device_to=torch.device("cpu"))
            assert multiplier == (1000.0 if name == "ModelSamplingSD3" else 1.0)
            assert seen[-1] == pytest.approx(0.75, abs=1e-6), name
    finally:
        dm._forward = original


def test_every_weight_is_cast_by_comfy_ops_and_manual_cast_matches_hdm_core(cui, loaded):
    """Layers are ComfyUI ops; the only raw tensors (RoPE freqs, time freqs) are cast inside hdm_core."""
    import hdm_core

    dm = loaded[0].model.diffusion_model
    raw = []
    for name, module in dm.named_modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if own and not hasattr(module, "comfy_cast_weights"):
            raw += [f"{name}.{n}" for n, _ in own]
    assert raw and all(r.endswith((".rope.freqs", "time_emb.freqs")) for r in raw), raw

    # Weights stored in bf16, every op casting to the fp32 input (what lowvram/manual cast do).
    for module in dm.modules():
        if hasattr(module, "comfy_cast_weights"):
            module.comfy_cast_weights = True
    saved = {k: v.clone() for k, v in dm.state_dict().items()}
    try:
        dm.to(torch.bfloat16)
        x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.6]), torch.randn(1, 5, H.TE_HIDDEN)
        with torch.no_grad():
            got = dm(x, t, context=ctx, transformer_options={})
        assert got.dtype == torch.float32
        # time_emb.freqs and the conditioning path (hdm_core.xut.FLOAT32_PREFIXES) stay float32
        # through the cast; every other weight is rounded to bf16.
        from hdm_core.xut import FLOAT32_PREFIXES

        exact = lambda k: k == "time_emb.freqs" or k.startswith(FLOAT32_PREFIXES)  # noqa: E731
        assert all(dm.state_dict()[k].dtype == torch.float32 for k in cui.xut_sd if exact(k))
        rounded = {k: v if exact(k) else v.bfloat16().float() for k, v in cui.xut_sd.items()}
        ref_model = hdm_core.load_xut(rounded, dtype=torch.float32)
        ref = ref_model(x, t, ctx, pos_map=hdm_core.camera_pos_map(8, 8)[None])
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    finally:
        dm.load_state_dict(saved)
        dm.to(torch.float32)
        for module in dm.modules():
            if hasattr(module, "comfy_cast_weights"):
                module.comfy_cast_weights = False


def test_lowvram_loading_with_lora_patches_matches_full_load(cui):
    """ModelPatcher's lowvram path (weights streamed per layer, LoRA applied on the fly)."""
    import comfy.sd
    import comfy.utils

    patcher = cui.hdm.loaders.load_hdm_checkpoint(str(cui.model_path("checkpoints", H.CKPT_NAME)), output_clip=False, output_vae=False)[0]
    lora = comfy.utils.load_torch_file(str(cui.write_lora("hdm-lora.safetensors")))
    lora_patcher, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    x, sigma, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.5]), torch.randn(1, 5, H.TE_HIDDEN)
    kw = dict(c_crossattn=ctx, hdm_camera=(0.0, 0.0, 1.0), hdm_tread_gamma=0.0, hdm_seed=0)
    device = torch.device("cpu")
    outs = {}
    for mode, memory in (("full", 0), ("lowvram", 1)):
        lora_patcher.patch_model(device_to=device, lowvram_model_memory=memory, load_weights=True)
        try:
            if mode == "lowvram":
                streamed = [m for m in lora_patcher.model.diffusion_model.modules() if getattr(m, "weight_function", None)]
                assert streamed, "nothing was set up for lowvram streaming"
            with torch.no_grad():
                outs[mode] = lora_patcher.model.apply_model(x, sigma, **kw)
        finally:
            lora_patcher.unpatch_model(device_to=device)
    with torch.no_grad():
        base = patcher.model.apply_model(x, sigma, **kw)
    torch.testing.assert_close(outs["lowvram"], outs["full"], rtol=1e-5, atol=1e-5)
    assert (outs["full"] - base).abs().max() > 1e-3  # the LoRA did something in both paths


def test_attention_goes_through_comfy_optimized_attention(cui, loaded):
    """An attention-override node (transformer_options) replaces every attention call."""
    calls = []

    def override(func, *args, **kwargs):
        calls.append(args[0].shape)
        return func(*args, **kwargs)

    dm = loaded[0].model.diffusion_model
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.6]), torch.randn(1, 5, H.TE_HIDDEN)
    with torch.no_grad():
        plain = dm(x, t, context=ctx, transformer_options={})
        overridden = dm(x, t, context=ctx, transformer_options={"optimized_attention_override": override})
    cfg = dm.config
    blocks = cfg.tread_config.prev_trns_depth + cfg.tread_config.post_trns_depth + cfg.depth * (cfg.enc_blocks + cfg.dec_blocks)
    assert len(calls) == blocks + cfg.depth  # self-attention per block + one cross-attention per decoder group
    assert calls[0] == (1, cfg.heads, 16 + 5, cfg.dim_head)
    torch.testing.assert_close(overridden, plain, rtol=0, atol=0)


def test_model_rebuild_factory_for_deep_clones(cui):
    """cached_patcher_init lets ComfyUI (v0.33 trainer, multi-GPU) rebuild the model."""
    import comfy.model_patcher

    node = cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"]
    model, clip, vae = node.execute(H.CKPT_NAME, H.TE_NAME).result
    fn, args = model.cached_patcher_init[:2]
    rebuilt = fn(*args, disable_dynamic=True)
    assert isinstance(rebuilt, comfy.model_patcher.ModelPatcher) and rebuilt.model is not model.model
    sd_a, sd_b = model.model.diffusion_model.state_dict(), rebuilt.model.diffusion_model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    if "force_deepcopy" in __import__("inspect").signature(model.clone).parameters:
        deep = model.clone(force_deepcopy=True)
        assert deep.model is not model.model
    for obj in (clip.patcher, vae.patcher):
        f, a = obj.cached_patcher_init[:2]
        assert isinstance(f(*a, disable_dynamic=True), comfy.model_patcher.ModelPatcher)


def test_memory_usage_factor_covers_the_measured_peak(cui):
    """The shipped factor is at least the activation peak measured on the released architecture."""
    bench = _script("measure_memory_factor")
    _, small = bench.measure(512, 512)
    _, large = bench.measure(1024, 1024)
    assert 0.3 < large <= small <= cui.hdm.model.HDMConfig.memory_usage_factor


def test_fit_latent_rgb_recovers_a_linear_map_and_runs_on_a_vae(cui, tmp_path):
    fit = _script("fit_latent_rgb")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 4, generator=gen)
    true_f = torch.randn(4, 3, generator=gen)
    true_b = torch.randn(3, generator=gen)
    f, b, stats = fit.fit_factors(z, z @ true_f + true_b)
    torch.testing.assert_close(f, true_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, true_b, rtol=1e-5, atol=1e-5)
    assert stats["r2"] == pytest.approx(1.0)

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        arr = (torch.rand(48, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(images / f"{i}.png")
    result = fit.main(["--vae", str(cui.model_path("checkpoints", H.CKPT_NAME)), "--images", str(images), "--size", "48"])
    assert len(result["factors"]) == 4 and all(len(r) == 3 for r in result["factors"]) and len(result["bias"]) == 3
    assert result["cells"] == 2 * 6 * 8
    assert 0.0 <= result["r2"] <= 1.0


def test_stock_checkpoint_save_round_trips_through_the_hdm_loader(cui):
    """ComfyUI's Save Checkpoint writes HDM's trainer layout (unet.model.* + vae.* + te.*), which loads back."""
    import shutil

    prompt = {
        "1": {"class_type": "HDMCheckpointLoader", "inputs": {"ckpt_name": H.CKPT_NAME, "text_encoder": H.TE_NAME}},
        "2": {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": "checkpoints/hdm-roundtrip"}},
    }
    result = cui.run(prompt)
    assert result.ok, result.error()
    saved = sorted((cui.root / "output" / "checkpoints").glob("hdm-roundtrip*.safetensors"))
    assert saved
    target = cui.models / "checkpoints" / "hdm-roundtrip.safetensors"
    shutil.copy(saved[-1], target)
    import comfy.utils

    keys = comfy.utils.load_torch_file(str(target)).keys()
    assert {k.split(".", 1)[0] for k in keys} == {"unet", "vae", "te"}

    node = cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"]
    a = node.execute(H.CKPT_NAME, H.TE_NAME).result
    b = node.execute("hdm-roundtrip.safetensors", "from checkpoint").result
    sd_a, sd_b = a[0].model.diffusion_model.state_dict(), b[0].model.diffusion_model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    tokens = "1girl, smile"
    torch.testing.assert_close(b[1].encode_from_tokens(b[1].tokenize(tokens)), a[1].encode_from_tokens(a[1].tokenize(tokens)), rtol=0, atol=0)
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(b[2].decode(z), a[2].decode(z), rtol=0, atol=0)


def test_cpu_uses_pytorch_sdpa_instead_of_comfys_sub_quadratic_fallback(cui, loaded, monkeypatch):
    """On the CPU ComfyUI's default is its sub-quadratic fallback; HDM runs PyTorch SDPA instead
    (exact, ~1.35x faster sampling), unless the user asked for it with --use-quad-cross-attention."""
    import comfy.cli_args
    import comfy.ldm.modules.attention as attn

    dm = loaded[0].model.diffusion_model
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.6]), torch.randn(1, 5, H.TE_HIDDEN)
    used = []

    def spy(name):
        real = getattr(attn, name)

        def fn(*args, **kwargs):
            used.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(attn, name, fn)
        return fn

    sub_quad = spy("attention_sub_quad")
    spy("attention_pytorch")
    monkeypatch.setattr(attn, "optimized_attention", sub_quad)  # what ComfyUI picks for a CPU by default
    monkeypatch.setattr(comfy.cli_args.args, "use_quad_cross_attention", False)
    with torch.no_grad():
        fast = dm(x, t, context=ctx, transformer_options={})
    assert used and set(used) == {"attention_pytorch"}
    used.clear()
    monkeypatch.setattr(comfy.cli_args.args, "use_quad_cross_attention", True)
    with torch.no_grad():
        asked = dm(x, t, context=ctx, transformer_options={})
    assert used and set(used) == {"attention_sub_quad"}
    torch.testing.assert_close(fast, asked, rtol=1e-5, atol=1e-5)
