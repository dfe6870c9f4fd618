"""PNG output: ComfyUI-style quantisation, metadata round trip, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from hdm_core.checkpoint import atomic_write, save_safetensors
from hdm_core.images import parameters_text, read_png_metadata, save_png, to_uint8


def test_quantisation_truncates_like_comfyui_saveimage():
    image = torch.tensor([0.0, 0.5, 0.999, 1.2, -0.1, 1 / 255 - 1e-6]).view(3, 1, 2)
    ref = np.clip(255.0 * image.permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)  # ComfyUI's SaveImage
    assert np.array_equal(to_uint8(image), ref)
    assert to_uint8(image).reshape(-1).tolist() == [0, 254, 0, 127, 255, 0]  # HWC order


def test_png_round_trip_with_metadata(tmp_path):
    image = torch.rand(3, 24, 40, generator=torch.Generator().manual_seed(0))
    meta = {"prompt": "1girl, 猫耳", "negative": "lowres", "seed": 2**40, "cfg": 3.0, "camera_map": True}
    path = save_png(image, tmp_path / "sub" / "a.png", meta)
    with Image.open(path) as im:
        assert im.size == (40, 24) and np.array_equal(np.asarray(im), to_uint8(image))
        assert im.text["parameters"] == parameters_text(meta)
    assert read_png_metadata(path) == meta
    assert parameters_text(meta).startswith("1girl, 猫耳\nNegative prompt: lowres\nSeed: 1099511627776, Cfg: 3.0")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o044, oct(mode)  # not mkstemp's private 0600
    save_png(image, tmp_path / "plain.png")
    assert read_png_metadata(tmp_path / "plain.png") == {}


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    save_safetensors({"a": torch.ones(2)}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
