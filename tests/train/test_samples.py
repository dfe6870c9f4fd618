"""Preview images during training: produced with a decoder, skipped cleanly without one."""

from __future__ import annotations

import logging

import torch
from PIL import Image

from trainer.config import SampleSection
from trainer.encoders import Encoders
from trainer.samples import make_sampler


def test_previews_need_a_decoder_and_are_skipped_without_one(tmp_path, si, caplog):
    cfg = SampleSection(every=2, prompts=("1girl, smile", "sky"), steps=2, width=64, height=48)
    te, vae = si.TinyTextEncoder(), si.TinyVAE()
    with caplog.at_level(logging.WARNING):
        assert make_sampler(cfg, Encoders(encode_text=te), tmp_path, "x", torch.device("cpu"), torch.float32, None) is None
    assert "sample images are skipped: no VAE decoder is configured ([encoders])" in caplog.text
    assert make_sampler(SampleSection(), Encoders(encode_text=te, decode_latents=vae.decode), tmp_path, "x",
                        torch.device("cpu"), torch.float32, None) is None  # every = 0: off  # fmt: skip

    sample = make_sampler(cfg, Encoders(encode_text=te, decode_latents=vae.decode), tmp_path, "x", torch.device("cpu"), torch.float32, None)
    model = si.tiny_xut(0)
    sample(4, model)
    first = Image.open(tmp_path / "x-step000004-00.png")
    assert first.size == (64, 48) and first.mode == "RGB"
    assert (tmp_path / "x-step000004-01.png").is_file()
    sample(6, model)  # the same seed every time: comparable across steps
    assert Image.open(tmp_path / "x-step000006-00.png").tobytes() == first.tobytes()
