"""The shipped img2img, inpainting, hires-fix and regional-prompt workflows, run in a real ComfyUI.

Each API workflow (workflows/api/) goes through ComfyUI's own validation and executor at test
size, on whichever host ``COMFYUI_PATH`` names (v0.33 and v0.3.64 are both supported), with the
tiny HDM models of the harness. The input pictures are written into the harness's temporary
input folder. The checks are on what each workflow is for, read off the latents and images it
produces: img2img at low denoise stays near the picture, inpainting keeps every unmasked latent,
hires fix ends at the upscaled size, and an area prompt changes only its own area.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


def write_input(cui, name: str, size=(64, 64), hole: tuple[int, int, int, int] | None = None) -> str:
    """A smooth colour picture in ComfyUI's input folder; ``hole`` (x0, y0, x1, y1) is made transparent,
    which LoadImage turns into its MASK output (1 where alpha is 0)."""
    from PIL import Image

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgba = np.stack([120 + 100 * xx / w, 60 + 150 * yy / h, 200 - 120 * xx / w, np.full((h, w), 255.0)], -1).astype(np.uint8)
    if hole is not None:
        x0, y0, x1, y1 = hole
        rgba[y0:y1, x0:x1, 3] = 0
    Image.fromarray(rgba, "RGBA").save(cui.root / "input" / name)
    return name


def output_pngs(cui, prefix: str) -> list:
    from PIL import Image

    return [Image.open(p) for p in sorted((cui.root / "output").glob(f"{prefix}*.png"))]


def clear_outputs(cui, prefix: str) -> None:
    """Remove this workflow's earlier images (its own filename prefix only) from the output folder."""
    for p in (cui.root / "output").glob(f"{prefix}*.png"):
        p.unlink()


def ok(result: H.RunResult) -> H.RunResult:
    assert result.ok, (result.validation if not result.validation[0] else result.error())
    return result


def test_img2img_low_denoise_stays_near_the_picture(cui):
    prompt = H.shrink(H.load_api_workflow("hdm_img2img"), steps=4)
    load, enc, ks = (H.find_node(prompt, c) for c in ("LoadImage", "VAEEncode", "KSampler"))
    prompt[load]["inputs"]["image"] = write_input(cui, "hdm-test-img2img.png", size=(80, 48))
    assert 0 < prompt[ks]["inputs"]["denoise"] < 1

    def run(denoise):
        p = copy.deepcopy(prompt)
        p[ks]["inputs"]["denoise"] = denoise
        clear_outputs(cui, "HDM-img2img")
        r = ok(cui.run(p, capture={"enc": (enc, 0), "out": (ks, 0)}))
        return r.outputs["enc"]["samples"], r.outputs["out"]["samples"]

    enc_a, low = run(0.2)
    enc_b, full = run(1.0)
    assert torch.equal(enc_a, enc_b) and low.shape == enc_a.shape == (1, 4, 6, 10)  # 48x80 px picture
    near, far = (low - enc_a).norm() / enc_a.norm(), (full - enc_a).norm() / enc_a.norm()
    assert near < 0.5 * far, (near, far)  # low denoise keeps the picture; full denoise replaces it
    assert [im.size for im in output_pngs(cui, "HDM-img2img")] == [(80, 48)]


def test_inpainting_keeps_the_unmasked_area(cui):
    prompt = H.shrink(H.load_api_workflow("hdm_inpaint"), steps=3)
    load, enc, ks = (H.find_node(prompt, c) for c in ("LoadImage", "VAEEncodeForInpaint", "KSampler"))
    prompt[load]["inputs"]["image"] = write_input(cui, "hdm-test-inpaint.png", hole=(0, 0, 24, 24))
    clear_outputs(cui, "HDM-inpaint")
    r = ok(cui.run(prompt, capture={"enc": (enc, 0), "out": (ks, 0), "mask": (load, 1)}))
    mask = r.outputs["mask"]
    assert mask.shape == (1, 64, 64) and mask[0, :24, :24].min() == 1 and mask[0, 24:, :].max() == 0 and mask[0, :, 24:].max() == 0
    latent_in, out = r.outputs["enc"]["samples"], r.outputs["out"]["samples"]
    noise_mask = torch.nn.functional.interpolate(r.outputs["enc"]["noise_mask"].reshape(1, 1, 64, 64), size=out.shape[-2:], mode="bilinear")[0, 0]
    keep, redraw = noise_mask == 0, noise_mask > 0.99
    assert keep.sum() > 20 and redraw.sum() > 4
    torch.testing.assert_close(out[..., keep], latent_in[..., keep], atol=1e-4, rtol=1e-4)  # unmasked: the picture's latent
    assert (out[..., redraw] - latent_in[..., redraw]).abs().mean() > 0.1  # masked: drawn anew
    assert [im.size for im in output_pngs(cui, "HDM-inpaint")] == [(64, 64)]


def test_hires_fix_ends_at_the_upscaled_size(cui):
    prompt = H.shrink(H.load_api_workflow("hdm_hires_fix"), width=64, height=64, steps=3)
    up = H.find_node(prompt, "LatentUpscaleBy")
    first, second = sorted((k for k, v in prompt.items() if v["class_type"] == "KSampler"), key=lambda k: prompt[k]["inputs"]["denoise"], reverse=True)
    assert prompt[up]["inputs"]["scale_by"] == 1.5 and prompt[second]["inputs"]["latent_image"] == [up, 0]
    assert prompt[first]["inputs"]["denoise"] == 1.0 and 0.3 <= prompt[second]["inputs"]["denoise"] <= 0.6
    clear_outputs(cui, "HDM-hires")
    r = ok(cui.run(prompt, capture={"first": (first, 0), "up": (up, 0), "out": (second, 0)}))
    assert r.outputs["first"]["samples"].shape == (1, 4, 8, 8)
    upscaled, out = r.outputs["up"]["samples"], r.outputs["out"]["samples"]
    assert upscaled.shape == out.shape == (1, 4, 12, 12)
    # the second pass refines the upscaled picture: it changes it, but less than new noise would
    change = (out - upscaled).norm() / upscaled.norm()
    assert 0.01 < change < 1.0, change
    assert [im.size for im in output_pngs(cui, "HDM-hires")] == [(96, 96)]


def regional_at_test_size(prompt: dict) -> dict:
    """128x64 px, each area prompt on one 64x64 half (the shipped file uses 1440x800 and two 720 px halves)."""
    prompt = H.shrink(prompt, width=128, height=64, steps=1)
    areas = sorted((k for k, v in prompt.items() if v["class_type"] == "ConditioningSetArea"), key=lambda k: prompt[k]["inputs"]["x"])
    assert [prompt[k]["inputs"]["x"] for k in areas] == [0, 720]
    for k, x in zip(areas, (0, 64)):
        prompt[k]["inputs"].update(width=64, height=64, x=x, y=0)
    return prompt


def test_regional_area_prompt_changes_only_its_area(cui):
    prompt = regional_at_test_size(H.load_api_workflow("hdm_regional_prompts"))
    ks = H.find_node(prompt, "KSampler")
    areas = sorted((k for k, v in prompt.items() if v["class_type"] == "ConditioningSetArea"), key=lambda k: prompt[k]["inputs"]["x"])
    right_text = prompt[areas[1]]["inputs"]["conditioning"][0]  # the HDM Text Encode of the right half
    base = ok(cui.run(prompt, capture={"out": (ks, 0)})).outputs["out"]["samples"]
    changed = copy.deepcopy(prompt)
    changed[right_text]["inputs"]["text"] += ", red hair, night sky"
    other = ok(cui.run(changed, capture={"out": (ks, 0)})).outputs["out"]["samples"]
    assert base.shape == (1, 4, 8, 16)
    # One step: the left half's result comes from the whole-picture and left prompts only; the right half's prompt moves the right half.
    torch.testing.assert_close(other[..., :8], base[..., :8], atol=1e-4, rtol=1e-4)
    assert (other[..., 8:] - base[..., 8:]).abs().mean() > 1e-3
    # ...and the regional prompts do something: without them (whole-picture prompt alone) the image differs.
    plain = copy.deepcopy(prompt)
    plain[ks]["inputs"]["positive"] = [whole_id(prompt), 0]
    alone = ok(cui.run(plain, capture={"out": (ks, 0)})).outputs["out"]["samples"]
    assert (alone - base).abs().mean() > 1e-3


def whole_id(prompt: dict) -> str:
    ids = [k for k, v in prompt.items() if v.get("_meta", {}).get("title") == "Whole picture"]
    assert len(ids) == 1
    return ids[0]


def test_shipped_flows_validate_at_full_size(cui):
    """The shipped files as they are (full size, example.png as ComfyUI ships it) pass ComfyUI's validation."""
    import asyncio

    write_input(cui, "example.png", size=(1024, 1024))
    for name in ("hdm_img2img", "hdm_inpaint", "hdm_hires_fix", "hdm_regional_prompts"):
        valid, error, outputs, node_errors = asyncio.run(cui.execution.validate_prompt(name, H.load_api_workflow(name), None))
        assert valid, (name, error, node_errors)
        assert outputs
