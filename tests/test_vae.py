"""The SDXL-layout VAE: full layout vs the released manifest, numerics vs ComfyUI's own VAE
on a small random config, loading layouts and errors, normalisation, tiled decoding."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hdm_core import latents
from hdm_core.checkpoint import CheckpointError, key_diff, save_safetensors
from hdm_core.testing import TINY_VAE, tiny_vae
from hdm_core.vae import (
    SDXL_VAE,
    Attention,
    AutoencoderKL,
    VAEConfig,
    find_vae_prefix,
    infer_vae_config,
    ldm_to_diffusers_key,
    load_vae,
    tiled_decode,
)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(seed=5)


@pytest.fixture(scope="module")
def vae_sd(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def test_full_layout_matches_released_manifest(fixtures_dir):
    manifest = json.loads((fixtures_dir / "full_manifest.json").read_text())["vae"]
    with torch.device("meta"):
        model = AutoencoderKL(SDXL_VAE, device="meta")
    expected = {e["key"][len("vae."):]: e["shape"] for e in manifest["keys"]}
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert key_diff(expected, got) == ""
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 83_653_863
    cfg = manifest["config_used"]
    assert list(SDXL_VAE.block_out_channels) == cfg["block_out_channels"]
    assert (SDXL_VAE.layers_per_block, SDXL_VAE.latent_channels, SDXL_VAE.norm_num_groups) == (
        cfg["layers_per_block"], cfg["latent_channels"], cfg["norm_num_groups"])
    assert list(latents.LATENTS_MEAN) == cfg["latents_mean"] and list(latents.LATENTS_STD) == cfg["latents_std"]
    # and the loader infers exactly this architecture from the manifest's shapes
    assert infer_vae_config(expected) == SDXL_VAE


def test_matches_comfyui_vae(vae, vae_sd, comfyui_path):
    from comfy.diffusers_convert import convert_vae_state_dict
    from comfy.ldm.models.autoencoder import AutoencoderKL as ComfyAutoencoderKL

    ldm = convert_vae_state_dict(dict(vae_sd))
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    theirs = ComfyAutoencoderKL(ddconfig=ddconfig, embed_dim=4).eval()
    result = theirs.load_state_dict(ldm, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 6, 8, generator=g)
    images = torch.rand(2, 3, 48, 64, generator=g) * 2 - 1
    with torch.no_grad():
        ours_dec, their_dec = vae.decode(z), theirs.decode(z)
        assert ours_dec.std() > 0.1
        torch.testing.assert_close(ours_dec, their_dec, rtol=0, atol=5e-5)
        torch.testing.assert_close(vae.encode(images, sample=False), theirs.encode(images), rtol=0, atol=5e-5)
    # the same ComfyUI-converted (LDM layout) file loads into ours and gives the same model
    loaded = load_vae({f"first_stage_model.{k}": v for k, v in ldm.items()})
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), ours_dec, rtol=0, atol=0)


def test_ldm_key_names():
    n = 4
    cases = {
        "encoder.down.2.block.1.nin_shortcut.weight": "encoder.down_blocks.2.resnets.1.conv_shortcut.weight",
        "encoder.down.0.downsample.conv.bias": "encoder.down_blocks.0.downsamplers.0.conv.bias",
        "decoder.up.0.block.2.conv1.weight": "decoder.up_blocks.3.resnets.2.conv1.weight",
        "decoder.up.3.upsample.conv.weight": "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.mid.block_2.norm1.bias": "decoder.mid_block.resnets.1.norm1.bias",
        "encoder.mid.attn_1.proj_out.weight": "encoder.mid_block.attentions.0.to_out.0.weight",
        "encoder.mid.attn_1.norm.weight": "encoder.mid_block.attentions.0.group_norm.weight",
        "decoder.norm_out.weight": "decoder.conv_norm_out.weight",
        "post_quant_conv.weight": "post_quant_conv.weight",
    }
    for ldm, diffusers in cases.items():
        assert ldm_to_diffusers_key(ldm, n) == diffusers


def test_load_from_hdm_checkpoint_and_separate_file(tmp_path, vae, vae_sd):
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vae.decode(z)
    allinone = {f"vae.{k}": v for k, v in vae_sd.items()}
    allinone["unet.model.in_patch.proj.weight"] = torch.zeros(8, 4, 2, 2)
    allinone["vae_mean"] = torch.zeros(1, 4, 1, 1)
    path = save_safetensors({k: v.half() for k, v in allinone.items()}, tmp_path / "hdm.safetensors")
    assert find_vae_prefix(list(allinone)) == "vae."
    fp16 = load_vae(path)
    assert fp16.dtype == torch.float16 and fp16.config == TINY_VAE  # file dtype by default
    fp32 = load_vae(path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fp32.decode(z), ref, rtol=0, atol=2e-2)  # fp16-rounded weights
    separate = save_safetensors(vae_sd, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    for source in (separate, separate.parent):  # a file or a diffusers folder
        with torch.no_grad():
            torch.testing.assert_close(load_vae(source).decode(z), ref, rtol=0, atol=0)
    assert not any(p.requires_grad for p in fp32.parameters()) and not fp32.training


def test_load_errors_are_readable(vae_sd):
    broken = {f"vae.{k}": v for k, v in vae_sd.items() if k != "decoder.up_blocks.1.resnets.2.conv2.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing keys.*decoder\.up_blocks\.1\.resnets\.2\.conv2\.bias"):
        load_vae(broken)
    wrong = {f"vae.{k}": v for k, v in vae_sd.items()}
    wrong["vae.decoder.mid_block.attentions.0.to_q.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'decoder\.mid_block\.attentions\.0\.to_q\.weight'"):
        load_vae(wrong)
    extra = {f"vae.{k}": v for k, v in vae_sd.items()}
    extra["vae.decoder.extra_block.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*decoder\.extra_block\.weight"):
        load_vae(extra)
    with pytest.raises(CheckpointError, match=r"no VAE weights found.*Qwen3 text encoder"):
        load_vae({"model.embed_tokens.weight": torch.zeros(1), "model.layers.0.self_attn.q_norm.weight": torch.zeros(1)})


def test_hdm_space_encode_decode(vae):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 32, 40, generator=g)
    with torch.no_grad():
        mean, logvar = vae.encode_moments(images * 2 - 1)
        z_mean = vae.encode_images(images, sample=False, chunk=2)
        torch.testing.assert_close(z_mean, latents.normalize(mean), rtol=0, atol=1e-5)  # chunks vs one batch
        s1 = vae.encode_images(images, generator=torch.Generator().manual_seed(9))
        s2 = vae.encode_images(images, generator=torch.Generator().manual_seed(9))
        assert torch.equal(s1, s2) and not torch.equal(s1, z_mean)
        # the posterior sample is mean + std·noise
        noise = (latents.denormalize(s1) - mean) / torch.exp(0.5 * logvar)
        assert abs(noise.std().item() - 1) < 0.25
        decoded = vae.decode_latents(z_mean)
        ref = (vae.decode(latents.denormalize(z_mean)) / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(decoded, ref, rtol=0, atol=1e-5)  # decoded one image at a time
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    with pytest.raises(ValueError, match="not a multiple of 8"):
        vae.encode_images(torch.rand(1, 3, 30, 40))


def test_per_image_generators_make_samples_independent_of_the_batch(vae):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    with torch.no_grad():
        batch = vae.encode_images(images, generator=gens(1, 2, 3), chunk=2)
        for i, seed in enumerate((1, 2, 3)):
            alone = vae.encode_images(images[i : i + 1], generator=gens(seed))
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-5)
        reordered = vae.encode_images(images.flip(0), generator=gens(3, 2, 1))
        torch.testing.assert_close(reordered.flip(0), batch, rtol=0, atol=1e-5)
        assert not torch.allclose(vae.encode_images(images, generator=gens(1, 2, 4))[2], batch[2])
        with pytest.raises(ValueError, match="got 2 generators for 3 images; give one per image"):
            vae.encode_images(images, generator=gens(1, 2))
        with pytest.raises(ValueError, match="got 1 generators for 3 images"):
            vae.encode(images * 2 - 1, generator=gens(1))


def test_tiled_decode_blending_is_exact_for_a_local_decoder():
    def local(z):  # each latent cell → its own 8×8 pixel block
        return F.interpolate(torch.tanh(z[:, :3] + z[:, 3:]), scale_factor=8, mode="nearest")

    z = torch.randn(2, 4, 21, 30, generator=torch.Generator().manual_seed(1))
    for tile, overlap in ((8, 4), (7, 3), (16, 0), (64, 16)):
        torch.testing.assert_close(tiled_decode(local, z, tile, overlap, 8), local(z), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="overlap < tile"):
        tiled_decode(local, z, 8, 8)


def test_tiled_decode_approximates_full_decode_without_seams():
    # A real VAE's mid attention barely mixes distant pixels; with random weights it would,
    # so silence it here. GroupNorm still sees per-tile statistics, hence "approximately".
    weak = tiny_vae(seed=5)
    for m in weak.modules():
        if isinstance(m, Attention):
            m.to_out[0].weight.data.zero_()
    z = torch.randn(1, 4, 16, 40, generator=torch.Generator().manual_seed(2))
    tile, overlap = 16, 8
    starts = [0, 8, 16, 24]  # x positions of the 4 tiles across 40 latent columns
    with torch.no_grad():
        full = weak.decode(z)
        blended = tiled_decode(weak.decode, z, tile=tile, overlap=overlap)
        naive = torch.zeros_like(full)  # tiles pasted over each other: what seams look like
        for x in starts:
            naive[..., x * 8 : (x + tile) * 8] = weak.decode(z[..., x : x + tile])
    assert (blended - full).abs().mean() < 0.15 * full.std()

    def seam_strength(img):  # column-to-column change at each tile border ÷ its typical size
        jump = (img[..., 1:] - img[..., :-1]).abs().mean(dim=(0, 1, 2))
        return torch.stack([jump[x * 8 - 1] for x in starts[1:]]) / jump.median()

    assert (seam_strength(naive) > 1.4).all()  # the measure does see seams
    assert (seam_strength(blended) < 1.3).all()
    assert (seam_strength(blended) - seam_strength(full)).abs().max() < 0.2
    # and through the HDM-space entry point
    with torch.no_grad():
        tiled01 = weak.decode_latents(latents.normalize(z), tile=tile, overlap=overlap)
    torch.testing.assert_close(tiled01, (blended / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


def test_config_rejects_bad_groups():
    with pytest.raises(ValueError, match="multiple of norm_num_groups"):
        VAEConfig(block_out_channels=(48, 64), norm_num_groups=32)
