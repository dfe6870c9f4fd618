"""HDM Train LyCORIS's sample previews (preview_every) inside a real ComfyUI, through its executor.

The previews reach ComfyUI's progress hook as ``("JPEG", image, size)`` every N steps, show
the headless trainer's preview of the adapter trained so far, and turning them on does not
change the trained file.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py
import standins as SI  # registered by tests/conftest.py

DATASET = "hdm_preview_ds"


@pytest.fixture(scope="module")
def dataset(cui):
    SI.write_image_folder(cui.root / "input" / DATASET, [(64, 64)] * 2, seed=9)
    return DATASET


@pytest.fixture(autouse=True)
def _every_update(monkeypatch):
    import comfy.utils

    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)  # v0.33 throttles updates
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompt(save_name: str, preview_every: int | None) -> dict:
    extra = {} if preview_every is None else {"preview_every": preview_every}
    return H.train_only_prompt(
        dataset_folder=DATASET, algorithm="lokr", lokr_factor=4, target="attn", steps=4, learning_rate=1e-2, seed=3,
        save_name=save_name, precision="fp32", captions="", **extra,
    )  # fmt: skip


def _previews(result) -> list[tuple[int, object]]:
    return [(value, p) for value, total, p in result.progress if p is not None]


def _saved(cui, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = cui.folder_paths.get_folder_paths("loras")[0]
    return load_file(f"{folder}/{name}.safetensors")


def test_previews_every_n_steps_and_the_same_adapter_as_without(cui, dataset):
    on = cui.run(_prompt("preview_on", 2), {"name": ("2", 2)})
    assert on.ok, on.error()
    previews = _previews(on)
    assert [step for step, _ in previews] == [2, 4]
    for _, (fmt, image, size) in previews:
        assert fmt == "JPEG" and image.size == (64, 64) and image.mode == "RGB" and size > 0
        assert np.asarray(image).std() > 1  # a decoded picture, not a flat fill
    assert not np.array_equal(np.asarray(previews[0][1][1]), np.asarray(previews[1][1][1]))  # the adapter trains on

    # the preview's settings: the first image's size, the node's seed (drawing: hdm_core.train.preview)
    module = sys.modules[cui.hdm.__name__ + ".train_preview"]
    params = module.preview_params(torch.zeros(4, 6, 8), 3)
    assert (params.width, params.height, params.seed, params.steps) == (64, 48, 3, module.PREVIEW_STEPS)

    off = cui.run(_prompt("preview_off", 0), {"name": ("2", 2)})
    legacy = cui.run(_prompt("preview_absent", None), {"name": ("2", 2)})  # workflows saved before the input existed
    assert off.ok and legacy.ok, (off.error(), legacy.error())
    assert _previews(off) == [] and _previews(legacy) == []
    a, b, c = _saved(cui, "preview_on"), _saved(cui, "preview_off"), _saved(cui, "preview_absent")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_without_a_vae_the_preview_is_the_latent_preview(cui, dataset, monkeypatch):
    """Training from latents needs no VAE; previews then use the model's latent-to-RGB factors."""
    prompt = _prompt("preview_latent2rgb", 4)
    # the folder still needs the VAE to encode it; give it, but let the preview see none (as with latents)
    module = sys.modules[cui.hdm.__name__ + ".train_preview"]
    original = module.TrainingPreview.__init__

    def no_vae(self, model, vae, *args, **kwargs):
        original(self, model, None, *args, **kwargs)

    monkeypatch.setattr(module.TrainingPreview, "__init__", no_vae)
    result = cui.run(prompt, {"name": ("2", 2)})
    assert result.ok, result.error()
    (step, (fmt, image, _)), = _previews(result)
    assert step == 4 and fmt == "JPEG" and image.size == (8, 8)  # one pixel per latent cell, as ComfyUI's Latent2RGB


def test_negative_preview_every_is_refused(cui, dataset):
    result = cui.run(_prompt("preview_bad", -1))
    assert not result.ok and result.validation[0] is False
    assert "preview_every -1 must be a whole number from 0 to 1000000" in str(result.validation)  # the node's own range check
