"""Preview images during training: HDM's pipeline recipe, skipped cleanly without a decoder."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from hdm_core.images import read_png_metadata, to_uint8
from trainer.config import SampleSection
from trainer.encoders import Encoders, HDMImageEncoder, HDMTextEncoder
from trainer.samples import make_sampler


def _unit(decode):
    from trainer.encoders import _decode_to_unit

    return _decode_to_unit(decode)


def test_previews_need_a_decoder_and_are_skipped_without_one(tmp_path, si, caplog):
    cfg = SampleSection(every=2, prompts=("1girl, smile", "sky"), steps=2, width=64, height=48)
    te, vae = si.TinyTextEncoder(), si.TinyVAE()
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING):
        assert make_sampler(cfg, Encoders(encode_text=te), tmp_path, "x", cpu, torch.float32, None) is None
    assert "sample images are skipped: no VAE decoder is configured" in caplog.text
    encoders = Encoders(encode_text=te, decode_latents=_unit(vae.decode))
    assert make_sampler(SampleSection(), encoders, tmp_path, "x", cpu, torch.float32, None) is None  # every = 0: off

    sample = make_sampler(cfg, encoders, tmp_path, "x", cpu, torch.float32, None)
    model = si.tiny_xut(0)
    sample(4, model)
    first = Image.open(tmp_path / "x-step000004-00.png")
    assert first.size == (64, 48) and first.mode == "RGB"
    meta = read_png_metadata(tmp_path / "x-step000004-01.png")
    assert meta["prompt"] == "sky" and meta["seed"] == 1 and meta["step"] == 4 and meta["adapter"] == "x"
    sample(6, model)  # the same seed every time: comparable across steps
    assert Image.open(tmp_path / "x-step000006-00.png").tobytes() == first.tobytes()


def test_previews_are_the_pipeline_image_with_the_real_decoder(tmp_path):
    """Built-in encoders: a preview equals HDMPipeline.generate for the same settings, byte for byte."""
    from hdm_core.pipeline import GenerationParams, HDMPipeline
    from hdm_core.testing import tiny_qwen3, tiny_vae, tiny_xut
    from hdm_core.text import TextEncoder

    xut, te, vae = tiny_xut(0), TextEncoder(tiny_qwen3(1)), tiny_vae(2)
    cfg = SampleSection(every=1, prompts=("1girl, smile",), negative="lowres", steps=3, cfg=3.0, width=64, height=48, seed=5)
    encoders = Encoders(decode_latents=HDMImageEncoder(vae).decode_latents)
    text = HDMTextEncoder(te)  # training captions padded to 256; previews encoded inference-style
    encoders.encode_text, encoders.encode_prompts = text, text.encode_prompts
    was_training = xut.train().training
    make_sampler(cfg, encoders, tmp_path, "x", torch.device("cpu"), torch.float32, None)(1, xut)
    assert was_training and all(m.training for m in xut.modules())  # modes put back after sampling
    xut.eval()

    params = GenerationParams(prompt="1girl, smile", negative="lowres", width=64, height=48, steps=3, cfg=3.0, seed=5)
    expected = to_uint8(HDMPipeline(xut, te, vae).generate(params)[0])
    got = np.asarray(Image.open(tmp_path / "x-step000001-00.png"))
    assert got.shape == (48, 64, 3) and got.std() > 1  # a real picture, not a flat fill
    assert np.array_equal(got, expected)
