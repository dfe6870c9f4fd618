"""The two front-ends agree: ``python -m hdm_core generate`` and ComfyUI running the shipped
workflows give the same image for the same weights, prompt and seed, and their parts (text
encoder, VAE, schedule, TREAD routing) give the same numbers.

Both load one pair of files the harness writes (``Comfy.write_shared_models``: a tiny XUT + a
VAE with the released shapes in fp16, a tiny Qwen3 in bf16), so every difference left is
float32 arithmetic done in another order (ComfyUI's attention kernels, batched CFG passes,
k-diffusion's Euler step written through ``denoised``). That is far below one 8-bit level, so
the PNGs may differ only where a value sits on a quantisation edge: **tolerance one level
(1/255) per channel, on at most 1 % of the values**. A wrong prompt, seed, camera, TREAD token
or schedule entry changes most pixels by many levels, which the same tests check.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hdm_comfy_harness as H  # registered by tests/conftest.py

MAX_LEVELS = 1  # per channel, 8-bit levels
MAX_DIFFERENT = 0.01  # fraction of channel values allowed to differ at all


@pytest.fixture(scope="module")
def shared(cui):
    return cui.write_shared_models()


def live(cui, name: str):
    """The pack's ``nodes.<name>`` module ComfyUI runs now (another test may have re-imported the pack)."""
    package = cui.nodes.NODE_CLASS_MAPPINGS["HDMSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{name}")


def run_ok(cui, prompt, capture=None):
    result = cui.run(prompt, capture)
    assert result.validation[0], result.validation
    assert result.ok, result.error()
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im, dtype=np.int16)


def assert_same_picture(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= MAX_LEVELS, f"pixels differ by up to {diff.max()} levels"
    assert (diff > 0).mean() <= MAX_DIFFERENT, f"{(diff > 0).mean():.2%} of the values differ"


# ----------------------------------------------------------------------------- the two front-ends
def comfy_workflow(cui, shared, *, text, negative, seed, steps, cfg, width, height, camera, gammas) -> dict:
    """The shipped HDM Sampler + camera + TREAD workflow, pointed at the shared files, at test size."""
    prompt = H.load_api_workflow("hdm_sampler_camera_tread")
    node = {cls: prompt[H.find_node(prompt, cls)]["inputs"] for cls in ("HDMCheckpointLoader", "HDMCamera", "HDMTreadGuidance", "HDMSampler", "EmptyLatentImage")}
    node["HDMCheckpointLoader"].update(ckpt_name=shared["ckpt"].name, text_encoder=shared["te"].name)
    prompt[node["HDMCamera"]["positive"][0]]["inputs"]["text"] = text
    prompt[node["HDMCamera"]["negative"][0]]["inputs"]["text"] = negative
    node["HDMCamera"].update(x_shift=camera[0], y_shift=camera[1], zoom=camera[2])
    node["HDMTreadGuidance"].update(positive_gamma=gammas[0], negative_gamma=gammas[1])
    node["HDMSampler"].update(seed=seed, steps=steps, cfg=cfg)
    node["EmptyLatentImage"].update(width=width, height=height)
    return prompt


def comfy_png(cui, prompt) -> Path:
    before = set((cui.root / "output").rglob("*.png"))
    run_ok(cui, prompt)
    new = set((cui.root / "output").rglob("*.png")) - before
    assert len(new) == 1, "SaveImage wrote no image"
    return new.pop()


def cli_png(shared, out: Path, *, text, negative, seed, steps, cfg, width, height, camera, gammas) -> Path:
    from hdm_core import cli

    argv = [
        "generate", "--prompt", text, "--negative", negative, "--ckpt", str(shared["ckpt"]), "--te", str(shared["te"]),
        "--seed", str(seed), "--steps", str(steps), "--cfg", str(cfg), "--width", str(width), "--height", str(height),
        "--camera-x", str(camera[0]), "--camera-y", str(camera[1]), "--zoom", str(camera[2]),
        "--tread-gamma", str(gammas[0]), "--tread-gamma-uncond", str(gammas[1]),
        "--sampler", "euler", "--device", "cpu", "--dtype", "fp32", "--tile", "none", "--quiet", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


CASES = {
    # the workflow as shipped (neutral camera, TREAD 0 / 0.5, empty negative), tag brackets in danbooru mode
    "shipped": dict(text="1girl, solo, izuna (blue archive), fox ears, smile", negative="", seed=3, steps=3, cfg=3.0,
                    width=64, height=64, camera=(0.0, 0.0, 1.0), gammas=(0.0, 0.5)),
    # every control off its default, a wide image (aspect addon, non-square camera map), both branches routed
    "camera+tread": dict(text="1girl, izuna (blue archive), shrine, night", negative="lowres, bad anatomy", seed=12, steps=3,
                         cfg=4.0, width=96, height=64, camera=(0.25, -0.125, 1.5), gammas=(0.25, 0.5)),
    # equal token counts and gammas: ComfyUI runs cond and uncond as one batch
    "batched": dict(text="1girl, solo, smile", negative="1boy, solo, smile", seed=5, steps=2, cfg=3.0,
                    width=64, height=64, camera=(0.0, 0.0, 1.0), gammas=(0.5, 0.5)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_image_equals_comfyui_workflow_image(cui, shared, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    kw = CASES[case]
    batches = []
    model_module = live(cui, "model")
    original = model_module.branch_rows
    monkeypatch.setattr(model_module, "branch_rows", lambda b, chunks: batches.append(list(chunks or [])) or original(b, chunks))
    comfy = pixels(comfy_png(cui, comfy_workflow(cui, shared, **kw)))
    cli = pixels(cli_png(shared, tmp_path / "cli.png", **kw))
    assert comfy.shape == (kw["height"], kw["width"], 3)
    assert comfy.std() > 20, "a low-contrast image: an 8-bit comparison would prove little"
    assert_same_picture(cli, comfy)
    if case == "batched":
        assert [0, 1] in batches or [1, 0] in batches, f"ComfyUI did not batch the two passes: {batches}"


def test_a_different_seed_or_control_is_far_outside_the_tolerance(shared):
    """The tolerance cannot hide a real difference: each change below moves many values by many levels.

    Run on hdm_core's pipeline loaded once (what the CLI runs, quantised as the CLI saves).
    """
    from hdm_core.images import to_uint8
    from hdm_core.pipeline import GenerationParams, HDMPipeline

    pipe = HDMPipeline.from_files(shared["ckpt"], shared["te"], device="cpu", dtype=torch.float32)

    def image(text, negative, seed, steps, cfg, width, height, camera, gammas):
        params = GenerationParams(
            prompt=text, negative=negative, seed=seed, steps=steps, cfg=cfg, width=width, height=height, camera_x=camera[0],
            camera_y=camera[1], zoom=camera[2], tread_gamma=gammas[0], tread_gamma_uncond=gammas[1],
        )
        return to_uint8(pipe.generate(params)[0]).astype(np.int16)

    kw = CASES["camera+tread"]
    base = image(**kw)
    for change in (dict(seed=13), dict(camera=(0.25, -0.125, 1.25)), dict(gammas=(0.25, 0.45)), dict(text=kw["text"] + ", smile")):
        diff = np.abs(image(**{**kw, **change}) - base)
        # (measured: 6-255 levels at most, 18-98 % of the values beyond the tolerance)
        assert diff.max() >= 4 * MAX_LEVELS and (diff > MAX_LEVELS).mean() > 10 * MAX_DIFFERENT, change


# ----------------------------------------------------------------------------- the parts
def test_both_front_ends_call_the_model_at_the_reference_times(cui, shared, monkeypatch):
    """HDM Sampler's Euler runs on hdm_core.flow.flow_timesteps, and the model sees the same float32 t as in hdm_core."""
    import comfy.samplers

    from hdm_core import pipeline
    from hdm_core.flow import flow_timesteps

    steps = 4
    model = live(cui, "loaders").load_hdm_checkpoint(str(shared["ckpt"]), output_clip=False, output_vae=False)[0]
    sigmas = live(cui, "sampler").hdm_sigmas(model, "hdm_uniform", steps)
    assert sigmas.dtype == torch.float32 and torch.equal(sigmas, flow_timesteps(steps).float())
    assert "hdm_uniform" not in comfy.samplers.KSampler.SCHEDULERS  # the pack adds it to its own node only

    comfy_calls = []
    cls = live(cui, "model").HDMDiffusionModel
    forward = cls._forward
    monkeypatch.setattr(cls, "_forward", lambda self, x, t, *a, **k: comfy_calls.append(t.tolist()) or forward(self, x, t, *a, **k))
    kw = dict(CASES["shipped"], steps=steps)
    run_ok(cui, comfy_workflow(cui, shared, **kw))

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.calls = []

        def forward(self, x, t, **kwargs):
            self.calls.append(t.tolist())
            return torch.zeros_like(x)

    rec = Recorder()
    params = pipeline.GenerationParams(steps=steps, width=64, height=64, seed=kw["seed"], tread_gamma_uncond=kw["gammas"][1])
    cond, uncond = pipeline.guidance_kwargs(torch.zeros(1, 3, 64), torch.zeros(1, 0, 64), params)
    pipeline.sample_latents(rec, pipeline.initial_noise(1, 64, 64, params.seed), cond, uncond, params)
    expected = [[t] for t in flow_timesteps(steps).float().tolist()[:-1] for _ in range(2)]  # cond, uncond per step
    assert rec.calls == expected
    assert comfy_calls == expected


@pytest.fixture(scope="module")
def encoders(cui, shared):
    """(ComfyUI CLIP from HDM Text Encoder Loader, hdm_core TextEncoder) on the same bf16 file, both computing in float32."""
    from hdm_core.text import TextEncoder

    (clip,) = cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncoderLoader"].execute(shared["te"].name).result
    return clip, TextEncoder.from_file(shared["te"], dtype=torch.float32)


def comfy_encode(cui, clip, text, mode=None):
    if mode is None:  # the stock CLIP Text Encode node
        (cond,) = cui.nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, text)
    else:
        (cond,) = cui.nodes.NODE_CLASS_MAPPINGS["HDMTextEncode"].execute(clip, text, mode).result
    assert len(cond) == 1
    return cond[0][0]


TAGS = "1girl, solo, izuna (blue archive), fox ears, smile, looking at viewer"
LITERAL = [
    # (what ComfyUI's node gets, bracket mode, what reaches the model: the literal text hdm_core encodes)
    (TAGS, "danbooru", TAGS),
    (TAGS.replace("(", r"\(").replace(")", r"\)"), "comfy", TAGS),
    (TAGS.replace("(", r"\(").replace(")", r"\)"), None, TAGS),  # stock CLIPTextEncode
    (TAGS.replace("(", r"\(").replace(")", r"\)"), "danbooru", TAGS),  # pre-escaped: not escaped twice
    ("1girl, solo, smile", "comfy", "1girl, solo, smile"),
    # HDM's TIPO layout: newlines, sentences, non-ASCII
    ("1girl,\nizuna (blue archive), blue archive,\n\nA fox girl (shrine maiden) in a shrine. 狐の巫女 ✨\n\nmasterpiece, newest",
     "danbooru",
     "1girl,\nizuna (blue archive), blue archive,\n\nA fox girl (shrine maiden) in a shrine. 狐の巫女 ✨\n\nmasterpiece, newest"),
    (", ".join([TAGS] * 40), "danbooru", ", ".join([TAGS] * 40)),  # ~700 tokens: no 77-token chunking
]  # fmt: skip


@pytest.mark.parametrize("given, mode, literal", LITERAL, ids=["danbooru", "comfy", "clip-text-encode", "danbooru-escaped", "plain", "tipo-layout", "long"])
def test_comfyui_text_encoder_equals_hdm_core_text_encoder(cui, encoders, given, mode, literal):
    clip, te = encoders
    got = comfy_encode(cui, clip, given, mode)
    ref = te.encode([literal]).float()
    assert got.shape == ref.shape, "ComfyUI and hdm_core tokenised differently"
    assert ref.shape[1] > 5
    # identical weights, float32 in both: only kernel-order differences remain (measured <= 2e-6 on values up to 4)
    torch.testing.assert_close(got.float(), ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("mode", ["danbooru", "comfy", None])
def test_empty_prompt_is_zero_tokens_in_both(cui, encoders, mode):
    clip, te = encoders
    got = comfy_encode(cui, clip, "", mode)
    assert got.shape == te.encode([""]).shape == (1, 0, H.TE_HIDDEN)


def test_comfyui_vae_equals_hdm_core_vae(cui, shared):
    """ComfyUI's VAE (from HDM Checkpoint Loader) and hdm_core.vae decode and encode the same latents to the same numbers."""
    from hdm_core.latents import denormalize, normalize
    from hdm_core.vae import load_vae

    vae = live(cui, "loaders").load_hdm_checkpoint(str(shared["ckpt"]), output_model=False, output_clip=False)[2]
    ours = load_vae(shared["ckpt"], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    z = denormalize(torch.randn(1, 4, 8, 12, generator=gen))  # a VAE-space latent, as ComfyUI's LATENT holds
    image = vae.decode(z)  # [B, H, W, 3] in [0, 1]
    assert image.shape == (1, 64, 96, 3) and image.std() > 0.05
    with torch.no_grad():
        ref = ours.decode_latents(normalize(z))  # [B, 3, H, W] in [0, 1]
    torch.testing.assert_close(image.float(), ref.permute(0, 2, 3, 1), rtol=0, atol=2e-5)  # measured 2e-6

    latent = vae.encode(image[..., :3])
    with torch.no_grad():
        ref_latent = denormalize(ours.encode_images(ref, sample=False))
    torch.testing.assert_close(latent.float(), ref_latent, rtol=1e-5, atol=1e-4)  # measured 1.2e-5 on values up to 1.6


# ----------------------------------------------------------------------------- any size
@pytest.fixture(scope="module")
def headless(shared):
    """hdm_core's pipeline on the shared files, float32 on the CPU (what the CLI runs)."""
    from hdm_core.pipeline import HDMPipeline

    return HDMPipeline.from_files(shared["ckpt"], shared["te"], device="cpu", dtype=torch.float32)


OFF_GRID = {
    # (width, height) in pixels: latents 65x65 and 125x93, off the 2x2 patch grid on both sides
    "520x520": (520, 520),
    "1000x744": (1000, 744),
}


@pytest.mark.parametrize("size", sorted(OFF_GRID))
def test_off_grid_sizes_sample_the_same_latents_in_both(cui, shared, headless, size):
    """Sizes that are not multiples of 16 px: ComfyUI (HDM model family, through the shipped
    workflow) and hdm_core's pipeline pad to the patch grid the same way, with the same
    positions, aspect addon and TREAD tokens, so the sampled latents agree (compared before
    the VAE, which would dominate the test's time at these sizes)."""
    from hdm_core.latents import normalize
    from hdm_core.pipeline import GenerationParams

    width, height = OFF_GRID[size]
    kw = dict(CASES["camera+tread"], steps=2, width=width, height=height)
    prompt = comfy_workflow(cui, shared, **kw)
    sampler_id = H.find_node(prompt, "HDMSampler")
    for node_id in [k for k, v in prompt.items() if v["class_type"] in ("HDMVAEDecode", "VAEDecode", "SaveImage", "PreviewImage")]:
        del prompt[node_id]
    comfy = normalize(run_ok(cui, prompt, {"latent": (sampler_id, 0)}).outputs["latent"]["samples"].float())

    pipe = headless
    params = GenerationParams(
        prompt=kw["text"], negative=kw["negative"], seed=kw["seed"], steps=kw["steps"], cfg=kw["cfg"], width=width,
        height=height, camera_x=kw["camera"][0], camera_y=kw["camera"][1], zoom=kw["camera"][2],
        tread_gamma=kw["gammas"][0], tread_gamma_uncond=kw["gammas"][1],
    )
    ours = pipe.sample(params)
    assert ours.shape == comfy.shape == (1, 4, height // 8, width // 8)
    print(f"{size}: max |ComfyUI - hdm_core| = {(comfy - ours).abs().max().item():.2e}")
    torch.testing.assert_close(comfy, ours, rtol=0, atol=2e-5)  # measured 2.9e-6 / 3.5e-6 (float32 op order)
    # the tolerance is far below what a real difference moves: another seed changes the latents by O(1)
    other = pipe.sample(GenerationParams(**{**params.__dict__, "seed": params.seed + 1}))
    assert (other - ours).abs().max() > 0.1


def test_hdm_core_pads_latents_with_comfyuis_rule(cui):
    """hdm_core (which never imports ComfyUI) pads exactly as comfy.ldm.common_dit.pad_to_patch_size does."""
    import comfy.ldm.common_dit

    from hdm_core.xut import pad_to_patch_size

    gen = torch.Generator().manual_seed(0)
    for h, w in ((65, 65), (93, 125), (64, 93), (2, 3)):
        x = torch.randn(2, 4, h, w, generator=gen)
        ours = pad_to_patch_size(x, 2)
        assert ours.shape[-2:] == (h + h % 2, w + w % 2)
        assert torch.equal(ours, comfy.ldm.common_dit.pad_to_patch_size(x, (2, 2)))
