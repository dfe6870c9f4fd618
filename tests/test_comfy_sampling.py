"""HDM inside a real ComfyUI: workflows run, and ComfyUI's sampling equals hdm_core's math.

Every prompt runs through ComfyUI's own validation and executor on tiny random models (see
comfy_harness.py); images are 64×64 px and runs use 2-3 steps, so the whole module takes
seconds per test.
"""

from __future__ import annotations

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py

TOL = dict(rtol=1e-5, atol=2e-4)  # latents reach |30|; float32 end to end


def run_ok(cui, prompt, capture=None):
    result = cui.run(prompt, capture)
    assert result.validation[0], result.validation
    assert result.ok, result.error()
    return result


def capture_conds(prompt):
    return {"latent": ("7", 0), "image": ("8", 0), "pos": ("2", 0), "neg": ("3", 0)}


# ----------------------------------------------------------------------------- equality with hdm_core
@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(camera=(0.25, -0.125, 1.5)),
        dict(gammas=(0.0, 0.5)),
        dict(gammas=(0.25, 0.5), camera=(-0.2, 0.1, 0.8)),
        dict(negative="lowres, bad anatomy", gammas=(0.3, 0.3)),  # equal-length pair may share a batch
        dict(width=96, height=64, cfg=1.0),
    ],
    ids=["plain", "camera", "tread-negative", "tread-both+camera", "tread-equal", "wide-cfg1"],
)
def test_hdm_sampler_equals_hdm_core(cui, case):
    case = dict(case)
    width, height = case.pop("width", 64), case.pop("height", 64)
    cfg = case.pop("cfg", 3.0)
    prompt = H.txt2img_prompt(seed=7, steps=3, cfg=cfg, width=width, height=height, **case)
    r = run_ok(cui, prompt, capture_conds(prompt))
    got = r.outputs["latent"]["samples"]
    assert got.shape == (1, 4, height // 8, width // 8)
    ref = H.reference_latent(
        cui, r.outputs["pos"][0][0], r.outputs["neg"][0][0], seed=7, shape=tuple(got.shape), cfg=cfg, steps=3,
        camera=case.get("camera", (0.0, 0.0, 1.0)), gammas=case.get("gammas", (0.0, 0.0)),
    )
    torch.testing.assert_close(got, ref, **TOL)
    image = r.outputs["image"]
    assert image.shape == (1, height, width, 3) and torch.isfinite(image).all()


def test_batch_of_two_with_tread_equals_hdm_core(cui):
    prompt = H.txt2img_prompt(seed=3, steps=2, gammas=(0.0, 0.5))
    prompt["4"]["inputs"]["batch_size"] = 2
    r = run_ok(cui, prompt, capture_conds(prompt))
    got = r.outputs["latent"]["samples"]
    ref = H.reference_latent(cui, r.outputs["pos"][0][0], r.outputs["neg"][0][0], seed=3, shape=(2, 4, 8, 8), cfg=3.0, steps=2, gammas=(0.0, 0.5))
    torch.testing.assert_close(got, ref, **TOL)
    assert not torch.allclose(got[0], got[1])


def test_stock_ksampler_workflow_equals_hdm_core_and_saves_an_image(cui):
    import comfy.samplers

    prompt = H.shrink(H.load_api_workflow("hdm_txt2img_ksampler"), steps=3)
    ks = H.find_node(prompt, "KSampler")
    prompt[ks]["inputs"]["seed"] = 11
    pos_id, neg_id = prompt[ks]["inputs"]["positive"][0], prompt[ks]["inputs"]["negative"][0]
    before = set((cui.root / "output").rglob("*.png"))
    r = run_ok(cui, prompt, {"latent": (ks, 0), "pos": (pos_id, 0), "neg": (neg_id, 0)})
    new_pngs = set((cui.root / "output").rglob("*.png")) - before
    assert len(new_pngs) == 1, "SaveImage wrote no image"
    from PIL import Image

    assert Image.open(next(iter(new_pngs))).size == (64, 64)
    model = cui.hdm.loaders.load_hdm_checkpoint(str(cui.model_path("checkpoints", H.CKPT_NAME)), output_clip=False, output_vae=False)[0]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), prompt[ks]["inputs"]["scheduler"], 3)
    ref = H.reference_latent(cui, r.outputs["pos"][0][0], r.outputs["neg"][0][0], seed=11, shape=(1, 4, 8, 8), cfg=prompt[ks]["inputs"]["cfg"], sigmas=sigmas)
    torch.testing.assert_close(r.outputs["latent"]["samples"], ref, **TOL)


# ----------------------------------------------------------------------------- determinism and controls
@pytest.mark.parametrize("name", ["hdm_txt2img_ksampler", "hdm_sampler_camera_tread", "hdm_lora"])
def test_api_workflow_runs_and_same_seed_gives_same_image(cui, name):
    if name == "hdm_lora":
        cui.write_lora("hdm-lora.safetensors")
    prompt = H.shrink(H.load_api_workflow(name), steps=2)
    decode = next(k for k, v in prompt.items() if v["class_type"] in ("VAEDecode", "HDMVAEDecode"))
    sampler = next(k for k, v in prompt.items() if v["class_type"] in ("KSampler", "HDMSampler"))
    a = run_ok(cui, prompt, {"image": (decode, 0)}).outputs["image"]
    b = run_ok(cui, prompt, {"image": (decode, 0)}).outputs["image"]
    assert a.shape == (1, 64, 64, 3) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert float(a.std()) > 1e-3, "a flat image: the pipeline lost its input"
    assert torch.equal(a, b)
    prompt[sampler]["inputs"]["seed"] += 1
    c = run_ok(cui, prompt, {"image": (decode, 0)}).outputs["image"]
    assert (a - c).abs().max() > 1e-3


def _image(cui, **kw):
    prompt = H.txt2img_prompt(seed=5, steps=2, **kw)
    return run_ok(cui, prompt, {"image": ("8", 0)}).outputs["image"]


def test_prompt_camera_and_gamma_changes_change_the_image(cui):
    base = _image(cui, camera=(0.0, 0.0, 1.0), gammas=(0.0, 0.5))
    variants = {
        "prompt": _image(cui, text="1boy, short hair", camera=(0.0, 0.0, 1.0), gammas=(0.0, 0.5)),
        "x_shift": _image(cui, camera=(0.3, 0.0, 1.0), gammas=(0.0, 0.5)),
        "y_shift": _image(cui, camera=(0.0, 0.3, 1.0), gammas=(0.0, 0.5)),
        "zoom": _image(cui, camera=(0.0, 0.0, 1.5), gammas=(0.0, 0.5)),
        "negative_gamma": _image(cui, camera=(0.0, 0.0, 1.0), gammas=(0.0, 0.25)),
        "positive_gamma": _image(cui, camera=(0.0, 0.0, 1.0), gammas=(0.3, 0.5)),
    }
    for what, img in variants.items():
        assert (img - base).abs().max() > 1e-3, f"changing {what} did not change the image"
    # The neutral camera node and no camera node are the same thing; gamma 0/0 equals no TREAD node.
    torch.testing.assert_close(_image(cui, camera=(0.0, 0.0, 1.0), gammas=(0.0, 0.0)), _image(cui), rtol=0, atol=0)


def test_camera_and_tread_nodes_do_not_mutate_upstream_conditioning(cui):
    hdm = cui.hdm
    cond = [[torch.zeros(1, 3, 4), {"pooled_output": None}]]
    neg = [[torch.zeros(1, 0, 4), {"pooled_output": None}]]
    pos2, neg2 = hdm.conditioning.HDMCamera.execute(cond, neg, 0.1, 0.2, 1.3).result
    pos3, neg3 = hdm.conditioning.HDMTreadGuidance.execute(pos2, neg2, 0.1, 0.6).result
    assert cond[0][1] == {"pooled_output": None} and neg[0][1] == {"pooled_output": None}
    assert pos3[0][1][hdm.model.CAMERA_KEY] == (0.1, 0.2, 1.3)
    assert pos3[0][1][hdm.model.TREAD_KEY] == 0.1 and neg3[0][1][hdm.model.TREAD_KEY] == 0.6
    assert hdm.model.TREAD_KEY not in pos2[0][1]
    assert neg3[0][1][hdm.model.CAMERA_KEY] == (0.1, 0.2, 1.3)


# ----------------------------------------------------------------------------- stock nodes on an HDM MODEL
def _with_model_sampling(prompt, node_type, shift):
    prompt = dict(prompt)
    prompt["20"] = {"class_type": node_type, "inputs": {"model": ["1", 0], "shift": shift}}
    prompt["7"] = {**prompt["7"], "inputs": {**prompt["7"]["inputs"], "model": ["20", 0]}}
    return prompt


def test_model_sampling_sd3_and_auraflow_keep_t_in_unit_range(cui):
    base = H.txt2img_prompt(seed=9, steps=3)
    plain = run_ok(cui, base, capture_conds(base)).outputs
    for node_type in ("ModelSamplingAuraFlow", "ModelSamplingSD3"):
        same = run_ok(cui, _with_model_sampling(base, node_type, 1.0), {"latent": ("7", 0)}).outputs["latent"]["samples"]
        torch.testing.assert_close(same, plain["latent"]["samples"], rtol=0, atol=1e-6)
    shifted = {}
    for node_type in ("ModelSamplingAuraFlow", "ModelSamplingSD3"):
        shifted[node_type] = run_ok(cui, _with_model_sampling(base, node_type, 3.0), {"latent": ("7", 0)}).outputs["latent"]["samples"]
    torch.testing.assert_close(shifted["ModelSamplingSD3"], shifted["ModelSamplingAuraFlow"], rtol=0, atol=1e-6)
    from hdm_core.flow import flow_timesteps

    ref = H.reference_latent(cui, plain["pos"][0][0], plain["neg"][0][0], seed=9, shape=(1, 4, 8, 8), cfg=3.0, sigmas=flow_timesteps(3, 3.0).float())
    torch.testing.assert_close(shifted["ModelSamplingSD3"], ref, **TOL)


def test_sampler_custom_advanced_matches_ksampler(cui):
    base = H.load_api_workflow("hdm_txt2img_ksampler")
    prompt = H.shrink(base, steps=3)
    ks = H.find_node(prompt, "KSampler")
    inputs = prompt[ks]["inputs"]
    prompt["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": inputs["seed"]}}
    prompt["31"] = {"class_type": "CFGGuider", "inputs": {"model": inputs["model"], "positive": inputs["positive"], "negative": inputs["negative"], "cfg": inputs["cfg"]}}
    prompt["32"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": inputs["sampler_name"]}}
    prompt["33"] = {"class_type": "BasicScheduler", "inputs": {"model": inputs["model"], "scheduler": inputs["scheduler"], "steps": 3, "denoise": 1.0}}
    prompt["34"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["30", 0], "guider": ["31", 0], "sampler": ["32", 0], "sigmas": ["33", 0], "latent_image": inputs["latent_image"]}}
    r = run_ok(cui, prompt, {"ks": (ks, 0), "sca": ("34", 0)})
    torch.testing.assert_close(r.outputs["sca"]["samples"], r.outputs["ks"]["samples"], rtol=1e-6, atol=1e-5)


def test_vae_encode_img2img_and_decoders_agree(cui):
    prompt = H.txt2img_prompt(seed=2, steps=2)
    prompt["40"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    prompt["41"] = {"class_type": "HDMVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2], "tiled": True, "tile_size": 256, "overlap": 64}}
    prompt["42"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["1", 2]}}
    prompt["43"] = {"class_type": "HDMSampler", "inputs": {**prompt["7"]["inputs"], "latent_image": ["42", 0], "denoise": 0.5}}
    prompt["44"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["42", 0], "seed": 2, "steps": 2, "cfg": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "denoise": 0.5}}
    r = run_ok(cui, prompt, {"hdm": ("8", 0), "stock": ("40", 0), "tiled": ("41", 0), "enc": ("42", 0), "i2i": ("43", 0), "ks_i2i": ("44", 0)})
    torch.testing.assert_close(r.outputs["hdm"], r.outputs["stock"], rtol=0, atol=0)
    # 64 px fits in one 256 px tile: tiled decoding must give the same picture.
    torch.testing.assert_close(r.outputs["tiled"], r.outputs["stock"], rtol=0, atol=2e-3)
    enc = r.outputs["enc"]["samples"]
    assert enc.shape == (1, 4, 8, 8)
    for key in ("i2i", "ks_i2i"):
        out = r.outputs[key]["samples"]
        assert out.shape == enc.shape and torch.isfinite(out).all()
        assert (out - enc).abs().max() > 1e-3


def test_lora_loader_model_only_applies_every_key_and_matches_merged_weights(cui):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    lora_path = cui.write_lora("hdm-lora.safetensors")
    lora = comfy.utils.load_torch_file(str(lora_path))
    model = cui.hdm.loaders.load_hdm_checkpoint(str(cui.model_path("checkpoints", H.CKPT_NAME)), output_clip=False, output_vae=False)[0]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map)
    modules = {k.rsplit(".", 2)[0] for k in lora if k.endswith(".lora_down.weight")}
    assert len(modules) > 20 and len(patches) == len(modules), "some LoRA keys were not mapped onto the HDM model"

    prompt = H.load_api_workflow("hdm_lora")
    prompt = H.shrink(prompt, steps=2)
    lora_node = H.find_node(prompt, "LoraLoaderModelOnly")
    sampler = H.find_node(prompt, "HDMSampler")
    pos_id, neg_id = prompt[sampler]["inputs"]["positive"][0], prompt[sampler]["inputs"]["negative"][0]
    with_lora = run_ok(cui, prompt, {"latent": (sampler, 0), "pos": (pos_id, 0), "neg": (neg_id, 0)}).outputs
    prompt[lora_node]["inputs"]["strength_model"] = 0.0
    without = run_ok(cui, prompt, {"latent": (sampler, 0)}).outputs["latent"]["samples"]
    assert (with_lora["latent"]["samples"] - without).abs().max() > 1e-2

    merged = {}
    for key, w in cui.xut_sd.items():
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_") if key.endswith(".weight") else None
        if name and name + ".lora_down.weight" in lora:
            down, up = lora[name + ".lora_down.weight"], lora[name + ".lora_up.weight"]
            scale = float(lora[name + ".alpha"]) / down.shape[0]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * scale
            w = w + delta
        merged[key] = w
    ref = H.reference_latent(
        cui, with_lora["pos"][0][0], with_lora["neg"][0][0], seed=prompt[sampler]["inputs"]["seed"], shape=(1, 4, 8, 8),
        cfg=prompt[sampler]["inputs"]["cfg"], steps=2, xut_sd=merged,
    )
    torch.testing.assert_close(with_lora["latent"]["samples"], ref, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- progress, previews, interrupt
def test_progress_previews_and_interrupt(cui):
    prompt = H.txt2img_prompt(seed=4, steps=3)
    r = run_ok(cui, prompt, {"image": ("8", 0)})
    steps = [(v, t) for v, t, _ in r.progress if t == 3]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    previews = [p for v, t, p in r.progress if t == 3 and p is not None]
    assert len(previews) == 3
    fmt, image = previews[0][0], previews[0][1]
    assert fmt in ("JPEG", "PNG") and image.size == (8, 8)

    import comfy.model_management

    hooks = []

    def interrupt_after_first_step():
        hooks.append(1)
        comfy.model_management.interrupt_current_processing(True)

    original = cui.progress.append

    class Trap(list):
        def append(self, item):
            original(item)
            if item[1] == 3 and item[0] == 1:
                interrupt_after_first_step()

    cui.progress = Trap()
    try:
        prompt["7"]["inputs"]["seed"] = 99  # not cached
        result = cui.run(prompt, {"image": ("8", 0)})
    finally:
        cui.progress = []
    assert hooks and not result.ok
    assert result.error()["event"] == "execution_interrupted"
    # The executor keeps working afterwards.
    assert run_ok(cui, H.txt2img_prompt(seed=5, steps=2), {"image": ("8", 0)}).outputs["image"].shape == (1, 64, 64, 3)
