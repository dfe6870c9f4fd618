"""The released file layout (full_manifest.json) loads through the HDM loader with no key left over.

The released ``hdm-xut-340M-1024px-note.safetensors`` holds ``unet.model.*`` and ``vae.*`` in
fp16 (plus the trainer's ``vae_mean``/``vae_std`` buffers) and no text encoder, which comes
from a separate Qwen3-0.6B file. Fast checks compare key names and shapes on the ``meta``
device; one test writes a full-size file with those exact keys and loads it for real.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


@pytest.fixture(scope="module")
def manifest():
    return H.manifest()


def shapes_under(entries, prefix):
    return {e["key"][len(prefix):]: e["shape"] for e in entries if e["key"].startswith(prefix)}


def test_released_xut_keys_map_onto_the_comfy_model(cui, manifest):
    import hdm_core
    from hdm_core.checkpoint import find_xut_prefix, infer_config, key_diff

    keys = [e["key"] for e in manifest["xudit"]["keys"]]
    assert find_xut_prefix(keys) == "unet.model."
    shapes = shapes_under(manifest["xudit"]["keys"], "unet.model.")
    config = infer_config(shapes)
    assert config.to_dict() == {**hdm_core.HDM_XUT_SMALL.to_dict(), "tread_config": {**hdm_core.HDM_XUT_SMALL.to_dict()["tread_config"]}}
    expected = cui.hdm.model.expected_unet_keys(config)
    assert key_diff(expected, shapes) == ""
    # The ComfyUI diffusion model class itself, built on meta with ComfyUI's ops.
    import comfy.ops

    with torch.device("meta"):
        dm = cui.hdm.model.HDMDiffusionModel(image_model="hdm_xut", dtype=torch.float16, device="meta", operations=comfy.ops.manual_cast, **config.to_dict())
    got = {k: list(v.shape) for k, v in dm.state_dict().items()}
    assert key_diff(got, shapes) == "" and len(got) == manifest["xudit"]["num_keys"] == 255
    assert sum(v.numel() for v in dm.parameters()) == manifest["xudit"]["total_parameters"]


def test_released_text_encoder_keys_map_onto_the_comfy_clip(cui, manifest):
    from hdm_core.checkpoint import key_diff

    te = cui.hdm.text_encoder
    shapes = shapes_under(manifest["text_encoder"]["keys"], "te.text_models.0.")
    config = te.qwen3_config_from_shapes(shapes)
    assert config == te.Qwen3Config()  # Qwen3-0.6B
    assert key_diff(te.expected_te_keys(config), shapes) == ""
    with torch.device("meta"):
        model = te.HDMTextEncoderModel(device="meta", dtype=torch.float16, qwen3_config=config)
    got = {k[len(te.COMFY_TE_PREFIX):]: list(v.shape) for k, v in model.state_dict().items() if k.startswith(te.COMFY_TE_PREFIX)}
    assert key_diff(got, shapes) == ""
    others = [k for k in model.state_dict() if not k.startswith(te.COMFY_TE_PREFIX)]
    assert others == [f"{te.TE_NAME}.logit_scale"]  # ComfyUI's CLIP bookkeeping, not a Qwen3 weight
    assert sum(v.numel() for k, v in model.state_dict().items() if k.startswith(te.COMFY_TE_PREFIX)) == manifest["text_encoder"]["total_parameters"]


def test_released_vae_keys_load_into_comfy_vae(cui, manifest):
    vae_path = cui.write_full_vae()  # every vae.* key and shape of the manifest, random values
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(vae_path))
    assert {k: list(v.shape) for k, v in sd.items()} == shapes_under(manifest["vae"]["keys"], "vae.")
    report = cui.hdm.loaders.LoadReport()
    vae = cui.hdm.loaders.build_vae({"vae." + k: v for k, v in sd.items()}, "test", report)
    assert report.vae_missing == [] and report.vae_unexpected == []
    assert vae.latent_channels == 4 and vae.spacial_compression_decode() == 8


@pytest.mark.skipif(os.environ.get("HDM_SKIP_FULL_LOAD") == "1", reason="HDM_SKIP_FULL_LOAD=1")
def test_full_size_released_layout_loads_with_separate_text_encoder(cui, manifest, tmp_path):
    """A full-size fp16 file with exactly the released keys + a separate full-width Qwen3 file.

    Values are zeros (the file is ~850 MB; random values would only cost time). The text
    encoder has Qwen3-0.6B's widths and vocabulary but one layer, to keep memory down.
    """
    import safetensors.torch

    t0 = time.time()
    tensors = {e["key"]: torch.zeros(e["shape"], dtype=torch.float16) for e in manifest["xudit"]["keys"] + manifest["vae"]["keys"]}
    from hdm_core import latents

    tensors["vae_mean"] = torch.tensor(latents.LATENTS_MEAN).view(1, 4, 1, 1).half()
    tensors["vae_std"] = torch.tensor(latents.LATENTS_STD).view(1, 4, 1, 1).half()
    ckpt = tmp_path / "hdm-full-layout.safetensors"
    safetensors.torch.save_file(tensors, str(ckpt))
    n_keys = len(tensors)
    del tensors
    te_sd = H.tiny_qwen3_state_dict(0, config={"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 1, "num_attention_heads": 16, "num_key_value_heads": 8})
    te_path = tmp_path / "qwen3-0.6b-1layer.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in te_sd.items()}, str(te_path))
    del te_sd

    model, clip, vae, report = cui.hdm.loaders.load_hdm_checkpoint(str(ckpt), str(te_path), model_options={"dtype": torch.float16})
    assert report.problems() == {}, report.problems()
    assert report.ignored == [] and n_keys == 255 + 248 + 2
    dm = model.model.diffusion_model
    assert dm.config.dim == 1024 and dm.config.heads == 16 and dm.dtype == torch.float16
    assert sum(p.numel() for p in dm.parameters()) == manifest["xudit"]["total_parameters"]
    cond = clip.encode_from_tokens(clip.tokenize("1girl"))
    assert cond.shape[-1] == 1024
    assert vae.latent_channels == 4
    # One model call at full width (16 image + 1 text token): every shape fits at 343M scale.
    with torch.no_grad():
        out = model.model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), c_crossattn=cond, hdm_camera=(0.0, 0.0, 1.0), hdm_tread_gamma=0.5, hdm_seed=0)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    del model, clip, vae
    assert time.time() - t0 < 300
