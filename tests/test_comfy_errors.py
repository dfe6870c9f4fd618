"""Bad input gives a clear message in ComfyUI's error dialog, and ComfyUI keeps working.

``execution_error.exception_message`` is exactly the text the frontend shows in its error
dialog; every case asserts on it, then runs a good prompt on the same executor.
"""

from __future__ import annotations

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


def expect_error(cui, prompt, node_id: str | set[str], *fragments: str) -> str:
    result = cui.run(prompt, {"image": ("8", 0)} if "8" in prompt else None)
    assert result.validation[0], result.validation
    err = result.error()
    assert err is not None and err["event"] == "execution_error", result.messages
    assert err["node_id"] in ({node_id} if isinstance(node_id, str) else node_id), err
    message = err["exception_message"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message:\n{message}"
    # ComfyUI is still usable: a good prompt runs on the same executor right after.
    ok = cui.run(H.txt2img_prompt(seed=123, steps=1), {"image": ("8", 0)})
    assert ok.ok and ok.outputs["image"].shape == (1, 64, 64, 3), ok.error()
    return message


def test_text_encoder_file_in_checkpoint_loader(cui):
    H.save(cui.te_sd, cui.models / "checkpoints" / "qwen3-as-checkpoint.safetensors")
    msg = expect_error(cui, H.txt2img_prompt(ckpt="qwen3-as-checkpoint.safetensors"), "1", "is not an HDM checkpoint", "Qwen3 text encoder", "models/checkpoints")
    assert "qwen3-as-checkpoint.safetensors" in msg


def test_other_model_family_in_checkpoint_loader(cui):
    sdxl_like = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 8),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
    }
    H.save(sdxl_like, cui.models / "checkpoints" / "sdxl-like.safetensors")
    expect_error(cui, H.txt2img_prompt(ckpt="sdxl-like.safetensors"), "1", "is not an HDM checkpoint", "SDXL UNet")


def test_wrong_file_as_text_encoder(cui):
    clip_l = {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8), "text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)}
    H.save(clip_l, cui.models / "text_encoders" / "clip_l.safetensors")
    expect_error(cui, H.txt2img_prompt(text_encoder="clip_l.safetensors"), "1", "is not a Qwen3 text encoder", "CLIP/T5", "Qwen3-0.6B")
    qwen25 = {k.replace("q_norm", "q_proj").replace(".weight", ".bias") if "q_norm" in k else k: v for k, v in H.tiny_qwen3_state_dict(0).items() if "k_norm" not in k}
    H.save(qwen25, cui.models / "text_encoders" / "qwen25.safetensors")
    expect_error(cui, H.txt2img_prompt(text_encoder="qwen25.safetensors"), "1", "Qwen2/Qwen2.5", "not Qwen3")
    import shutil

    shutil.copy(cui.model_path("checkpoints", H.CKPT_NAME), cui.models / "text_encoders" / "hdm-as-te.safetensors")
    expect_error(cui, H.txt2img_prompt(text_encoder="hdm-as-te.safetensors"), "1", "HDM diffusion-model checkpoint without a text encoder")


def test_larger_qwen3_is_refused_with_the_reason(cui):
    wide = H.tiny_qwen3_state_dict(0, config={"hidden_size": 96})
    H.save(wide, cui.models / "text_encoders" / "qwen3-wide.safetensors")
    expect_error(cui, H.txt2img_prompt(text_encoder="qwen3-wide.safetensors"), "1", "hidden size 96", "Qwen3-0.6B")


def test_missing_text_encoder_says_where_to_put_qwen3(cui):
    # The released layout: no text encoder in the checkpoint, and none selected.
    for node in ("HDMTextEncode", "CLIPTextEncode"):
        prompt = H.txt2img_prompt(text_encoder="from checkpoint")
        if node == "CLIPTextEncode":
            prompt["2"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "1girl"}}
        expect_error(cui, prompt, {"2", "3"}, "holds no text encoder", "Qwen3-0.6B", "https://huggingface.co/Qwen/Qwen3-0.6B", "model.safetensors", "ComfyUI/models/text_encoders")


def test_checkpoint_without_text_encoder_still_loads_when_clip_comes_from_elsewhere(cui):
    prompt = H.txt2img_prompt(text_encoder="from checkpoint")
    prompt["9"] = {"class_type": "HDMTextEncoderLoader", "inputs": {"text_encoder": H.TE_NAME}}
    prompt["2"]["inputs"]["clip"] = ["9", 0]
    prompt["3"]["inputs"]["clip"] = ["9", 0]
    result = cui.run(prompt, {"image": ("8", 0)})
    assert result.ok, result.error()


@pytest.mark.parametrize("width,height", [(72, 64), (64, 40)])
def test_size_not_multiple_of_16_runs_padded(cui, width, height):
    """Sizes off the 16-px grid run in HDM Sampler and stock KSampler alike (padded to the patch grid,
    cropped back: tests/test_anysize.py) and give an image of exactly the asked size."""
    for sampler in ("HDMSampler", "KSampler"):
        prompt = H.txt2img_prompt(width=width, height=height)
        if sampler == "KSampler":
            prompt["7"] = {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0, "steps": 1,
                "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}  # fmt: skip
        result = cui.run(prompt, {"image": ("8", 0)})
        assert result.ok, result.error()
        image = result.outputs["image"]
        assert image.shape == (1, height, width, 3) and torch.isfinite(image).all()


def test_too_small_latent_is_named(cui):
    prompt = H.txt2img_prompt(width=16, height=64)  # Empty Latent Image's smallest width, then halved: 8x32 px
    prompt["10"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["4", 0], "upscale_method": "nearest-exact", "scale_by": 0.5}}
    prompt["7"]["inputs"]["latent_image"] = ["10", 0]
    expect_error(cui, prompt, "7", "at least 16x16 pixels", "8x32 px")  # the model family's check (any sampler node)


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        ("truncated.safetensors", None, "truncated"),
        ("error-page.safetensors", b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        ("empty.safetensors", b"", "empty or truncated"),
        ("lfs-pointer.safetensors", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", "Git LFS pointer"),
    ],
)
def test_corrupt_checkpoint_file(cui, name, content, fragment):
    path = cui.models / "checkpoints" / name
    if content is None:
        data = cui.model_path("checkpoints", H.CKPT_NAME).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    msg = expect_error(cui, H.txt2img_prompt(ckpt=name), "1", fragment, name)
    assert "download" in msg or "not model weights" in msg or "git lfs" in msg.lower()


def test_corrupt_text_encoder_file(cui):
    data = cui.model_path("text_encoders", H.TE_NAME).read_bytes()
    (cui.models / "text_encoders" / "qwen3-truncated.safetensors").write_bytes(data[: len(data) // 3])
    expect_error(cui, H.txt2img_prompt(text_encoder="qwen3-truncated.safetensors"), "1", "truncated", "download it again")


def test_checkpoint_without_vae_points_to_load_vae(cui):
    H.save({"unet.model." + k: v for k, v in cui.xut_sd.items()}, cui.models / "checkpoints" / "hdm-no-vae.safetensors")
    expect_error(cui, H.txt2img_prompt(ckpt="hdm-no-vae.safetensors"), "8", "holds no VAE", "Load VAE", "models/vae")
    # ... and the stock Load VAE node loads a standalone EQ-SDXL-VAE file for it.
    cui.write_full_vae()
    prompt = H.txt2img_prompt(ckpt="hdm-no-vae.safetensors")
    prompt["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": H.VAE_NAME}}
    prompt["8"]["inputs"]["vae"] = ["9", 0]
    result = cui.run(prompt, {"image": ("8", 0)})
    assert result.ok and result.outputs["image"].shape == (1, 64, 64, 3), result.error()


def test_damaged_diffusion_model_weights(cui):
    sd = {"unet.model." + k: v for k, v in cui.xut_sd.items() if "backbone.dec_blocks.1.0.mlp.w3" not in k}
    sd["unet.model.backbone.enc_blocks.0.0.attn.qkv.weight"] = torch.zeros(10, 64)
    H.save(sd, cui.models / "checkpoints" / "hdm-damaged.safetensors")
    expect_error(cui, H.txt2img_prompt(ckpt="hdm-damaged.safetensors"), "1", "missing keys", "shape mismatch", "damaged")
