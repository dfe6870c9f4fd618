"""HDM Train LyCORIS inside a real ComfyUI: data sources, files, the shared model, interrupt, errors.

The node runs under ``torch.inference_mode()`` as ComfyUI's executor runs nodes (and twice
through the executor itself: the interrupt and the shipped workflow), on the harness's tiny
HDM checkpoint and tiny Qwen3. Adapters are saved into a temporary ``loras`` folder
registered with ``folder_paths`` ahead of the harness's own. Run with
``COMFYUI_PATH=~/ComfyUI-0.3.64`` for the older line.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py
import standins as SI  # registered by tests/conftest.py (write_image_folder)

DATASET = "hdm_train_node_ds"  # in ComfyUI's input folder
IMAGES = 4
CAPTION_PREFIX = "1girl ||| "  # the folder's caption files: '|||' is resolved as the trainer does


@pytest.fixture(scope="module")
def loras(cui):
    """A temporary loras folder, first in ComfyUI's list (where the node saves)."""
    folder = Path(tempfile.mkdtemp(prefix="hdm-train-loras-", dir=cui.root))
    cui.folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    yield folder
    cui.folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))


@pytest.fixture(scope="module")
def loaded(cui):
    """(MODEL, CLIP, VAE) of the tiny HDM checkpoint, as HDM Checkpoint Loader gives them."""
    return cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"].execute(H.CKPT_NAME, H.TE_NAME).result


@pytest.fixture(scope="module")
def dataset(cui):
    folder = cui.root / "input" / DATASET
    paths = SI.write_image_folder(folder, [(64, 64)] * IMAGES, seed=3)
    return folder, paths


@pytest.fixture(scope="module")
def encoded(cui, loaded, dataset):
    """The dataset as an IMAGE batch + caption lines, and as LATENT + one conditioning per latent
    (VAE Encode, HDM Text Encode of the cleaned captions, Conditioning Combine)."""
    import numpy as np
    from PIL import Image

    _, clip, vae = loaded
    paths = dataset[1]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))) for p in paths]).float() / 255
    captions = [p.with_suffix(".txt").read_text() for p in paths]
    with torch.inference_mode():
        latent = cui.nodes.NODE_CLASS_MAPPINGS["VAEEncode"]().encode(vae, pixels)[0]
        conds = [cui.hdm.HDMTextEncode.execute(clip, c.replace(CAPTION_PREFIX, "1girl, "), "danbooru")[0] for c in captions]
        combine = cui.nodes.NODE_CLASS_MAPPINGS["ConditioningCombine"]()
        cond = conds[0]
        for c in conds[1:]:
            cond = combine.combine(cond, c)[0]
    return {"pixels": pixels, "captions": captions, "latent": latent, "conds": conds, "cond": cond}


def from_latents(encoded) -> dict:
    return dict(dataset_folder="", clip=None, vae=None, latent=encoded["latent"], conditioning=encoded["cond"])


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_node(cui):
    return cui.nodes.NODE_CLASS_MAPPINGS["HDMTrainLyCORIS"]


def node_module(cui):
    return sys.modules[cui.hdm.__name__ + ".train"]


def run(cui, loaded, **overrides):
    """The node's ``execute`` under inference mode, as ComfyUI's executor calls it (``io.NodeOutput``)."""
    model, clip, vae = loaded
    run_defaults = dict(model=model, clip=clip, vae=vae, dataset_folder=DATASET, steps=3, batch_size=2, learning_rate=1e-2, save_name="run")
    kwargs = H.train_inputs(**{**run_defaults, **overrides})
    with torch.inference_mode():
        return H.execute_node(train_node(cui), **kwargs)


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def snapshot(patcher) -> dict:
    """Everything of a MODEL that training could leave changed: the shared weights, flags, patches."""
    dm = patcher.model.diffusion_model
    return {
        "weights": {k: v.detach().clone() for k, v in dm.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in dm.named_parameters()},
        "training": dm.training,
        "patches": {k: len(v) for k, v in patcher.patches.items()},
        "uuid": getattr(patcher, "patches_uuid", None),
    }


def assert_same(before: dict, after: dict, flags: bool = True) -> None:
    """``flags=False`` after ComfyUI itself patched and unpatched the model: 0.3.x puts weights back
    as ``Parameter(requires_grad=False)``."""
    assert before["weights"].keys() == after["weights"].keys()
    changed = [k for k, v in before["weights"].items() if v.dtype != after["weights"][k].dtype or not torch.equal(v, after["weights"][k])]
    assert not changed, f"the shared model's weights changed: {changed[:5]}"
    if flags:
        assert before["grad"] == after["grad"]
    assert before["training"] == after["training"]
    assert before["patches"] == after["patches"] and before["uuid"] == after["uuid"]


def clean_snapshot(patcher) -> dict:
    """The snapshot with nothing loaded (the shared module holds its own weights, not a loaded clone's
    patched ones), after one load/unload by ComfyUI (which, in 0.3.x, resets patched weights' flags)."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    mm.unload_all_models()
    return snapshot(patcher)


def model_output(patcher) -> torch.Tensor:
    """The MODEL's denoiser output on fixed inputs, loaded by ComfyUI's model management as sampling does."""
    import comfy.model_management as mm

    gen = torch.Generator().manual_seed(21)
    x, ctx = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, H.TE_HIDDEN, generator=gen)
    mm.load_models_gpu([patcher])
    with torch.inference_mode():
        return patcher.model.apply_model(x, torch.tensor([0.6]), c_crossattn=ctx, hdm_camera=(0.0, 0.0, 1.0), hdm_tread_gamma=0.0, hdm_seed=0).float()


def lora_loader_output(cui, model, name: str) -> torch.Tensor:
    loader = cui.nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]
    assert name in loader.INPUT_TYPES()["required"]["lora_name"][0], f"Load LoRA does not list {name}"
    with torch.inference_mode():
        patched = loader().load_lora_model_only(model, name, 1.0)[0]
    return model_output(patched)


def adapter_tensors(loras: Path, name: str) -> dict[str, torch.Tensor]:
    return read_file(loras / name)[0]


def check_loss_curve(image: torch.Tensor) -> None:
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    assert image.shape[1] >= 100 and image.shape[2] >= 100
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    flat = image[0].reshape(-1, 3)
    assert float(flat.std(0).max()) > 0.05, "a blank loss curve"
    # the smoothed curve is drawn in blue (30, 90, 200) over a white background
    blue = ((flat * 255).round() - torch.tensor([30.0, 90.0, 200.0])).abs().max(-1).values < 1
    assert int(blue.sum()) > 50, "no loss curve was drawn"


# ----------------------------------------------------------------------------- data sources
def test_folder_training_saves_where_loraloader_finds_it_and_renders_like_it(cui, loaded, loras, dataset):
    import comfy.model_management as mm

    model = loaded[0]
    before = clean_snapshot(model)
    out = run(cui, loaded, save_name="folder_run", unique_id="7")
    trained, curve, name = out.result
    assert_same(before, snapshot(model))  # checked straight away: nothing was loaded or patched afterwards

    assert name == "folder_run.safetensors" and (loras / name).is_file()
    assert name in cui.folder_paths.get_filename_list("loras")
    assert cui.folder_paths.get_full_path("loras", name) == str(loras / name)
    tensors, meta = read_file(loras / name)
    assert any(k.endswith(".lora_up.weight") for k in tensors)
    assert meta["ss_steps"] == "3" and meta["ss_num_train_images"] == str(IMAGES)
    assert meta["hdm_dataset"] == f"folder {DATASET}" and meta["ss_resolution"] == "(64, 64)"

    check_loss_curve(curve)
    preview = out.ui["images"][0]
    assert preview["type"] == "temp" and (Path(cui.folder_paths.get_temp_directory()) / preview["filename"]).is_file()
    texts = [d["text"] for e, d in cui.server.messages if e == "progress_text" and d["node"] == "7"]
    assert any(t.startswith("step 3/3") for t in texts) and texts[-1].endswith("saved as folder_run.safetensors")

    # The returned MODEL is the input + the file through stock Load LoRA, and the adapter does something.
    got = model_output(trained)
    assert torch.equal(got, lora_loader_output(cui, model, name))
    base = model_output(model)
    assert float((got - base).abs().max()) > 1e-3
    mm.unload_all_models()
    assert_same(before, snapshot(model), flags=False)


def test_image_batch_trains_the_same_adapter_as_the_folder_and_latents_train_too(cui, loaded, loras, encoded):
    a = run(cui, loaded, save_name="src_folder").result[2]
    out = run(cui, loaded, dataset_folder="", images=encoded["pixels"], captions="\n".join(encoded["captions"]), save_name="src_images")
    b = out.result[2]
    ta, tb = adapter_tensors(loras, a), adapter_tensors(loras, b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), "IMAGE batch and folder trained differently"
    assert read_file(loras / b)[1]["hdm_dataset"] == f"IMAGE batch ({IMAGES} images)"
    assert torch.equal(model_output(out.result[0]), lora_loader_output(cui, loaded[0], b))

    # LATENT + conditioning, one prompt per latent
    model = loaded[0]
    before = clean_snapshot(model)
    out = run(cui, loaded, **from_latents(encoded), save_name="src_latent")
    assert_same(before, snapshot(model))
    name = out.result[2]
    tensors, meta = read_file(loras / name)
    assert meta["hdm_dataset"] == f"LATENT ({IMAGES} latents)" and "ss_resolution" not in meta
    # The same images and captions: the same adapter up to float rounding of the pixels ([-1, 1] round trip).
    # lora_up starts at zero, so it holds exactly what was learned.
    ups = [k for k in ta if k.endswith(".lora_up.weight")]
    diff = max(float((tensors[k].float() - ta[k].float()).abs().max()) for k in ups)
    learned = max(float(ta[k].float().abs().max()) for k in ups)
    assert learned > 1e-3 and diff < 0.02 * learned, f"LATENT and folder adapters differ by {diff} (learned up to {learned})"
    trained = model_output(out.result[0])
    assert torch.equal(trained, lora_loader_output(cui, model, name))
    assert float((trained - model_output(model)).abs().max()) > 1e-3
    # a single conditioning serves every latent
    out = run(cui, loaded, **{**from_latents(encoded), "conditioning": encoded["conds"][0]}, save_name="src_latent_one")
    assert read_file(loras / out.result[2])[1]["ss_steps"] == "3"


# ----------------------------------------------------------------------------- the shared model
def test_lora_on_the_input_is_the_base_and_a_failure_leaves_the_model_untouched(cui, loaded, loras, dataset, monkeypatch):
    import comfy.model_management as mm

    model = loaded[0]
    with torch.inference_mode():
        lora_model = cui.nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(
            model, cui.write_lora("hdm-lora.safetensors").name, 1.0
        )[0]
    before = clean_snapshot(lora_model)
    trained, _, name = run(cui, loaded, model=lora_model, save_name="on_lora").result
    assert_same(before, snapshot(lora_model))
    # the adapter was trained on (and is applied over) the LoRA'd weights: stock LoRA path, same numbers
    got = model_output(trained)
    assert torch.equal(got, lora_loader_output(cui, lora_model, name))
    assert float((got - model_output(lora_model)).abs().max()) > 1e-3
    base_weights = node_module(cui).effective_weights(model)
    lora_weights = node_module(cui).effective_weights(lora_model)
    assert any(not torch.equal(base_weights[k], lora_weights[k]) for k in base_weights)

    # A failure in the middle of training: the engine raises from its progress callback at step 2.
    module = node_module(cui)
    real_train = module.train
    reached = []

    def failing_train(*args, callbacks, **kwargs):
        def progress(info):
            callbacks.progress(info)
            reached.append(info.step)
            if info.step == 2:
                raise RuntimeError("injected failure at step 2")

        return real_train(*args, callbacks=module.TrainCallbacks(progress=progress, should_stop=callbacks.should_stop), **kwargs)

    monkeypatch.setattr(module, "train", failing_train)
    files = sorted(p.name for p in loras.rglob("*"))
    before = clean_snapshot(lora_model)
    with pytest.raises(RuntimeError, match="injected failure at step 2"):
        run(cui, loaded, model=lora_model, steps=5, save_name="fails")
    assert reached == [1, 2]
    assert_same(before, snapshot(lora_model))
    assert sorted(p.name for p in loras.rglob("*")) == files  # nothing half-written
    mm.unload_all_models()
    assert_same(before, snapshot(lora_model), flags=False)
    # and the model still samples exactly as before
    assert torch.equal(model_output(lora_model), lora_loader_output(cui, model, "hdm-lora.safetensors"))


# ----------------------------------------------------------------------------- interrupt (through the executor)
def test_interrupt_keeps_the_adapter_trained_so_far(cui, loras, dataset, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    # v0.33 throttles progress updates (100 ms); every step must reach the hook for a deterministic stop
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)

    prompt = {
        "1": {"class_type": "HDMCheckpointLoader", "inputs": {"ckpt_name": H.CKPT_NAME, "text_encoder": H.TE_NAME}},
        "2": {"class_type": "HDMTrainLyCORIS", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset_folder": DATASET, "resolution": 64,
            "crop": "bucket", "missing_captions": "error", "bracket_mode": "danbooru", "algorithm": "lokr", "rank": 4,
            "alpha": 4.0, "lokr_factor": 4, "target": "attn", "exclude": "", "steps": 6, "batch_size": 1,
            "learning_rate": 1e-3, "scheduler": "cosine", "warmup_steps": 0, "tread_rate": 0.0, "seed": 5,
            "save_name": "interrupted", "save_every": 2, "gradient_checkpointing": False, "precision": "auto",
            "captions": ""}},
    }  # fmt: skip
    calls = []

    class Trap(list):
        def append(self, item):
            list.append(self, item)
            if item[1] == 6 and item[0] == 3:  # after training step 3 of 6
                calls.append(item)
                mm.interrupt_current_processing(True)

    cui.progress = Trap()
    try:
        result = cui.run(prompt, {"model": ("2", 0)})
    finally:
        cui.progress = []
    assert calls == [(3, 6, None)] and not result.ok, result.progress
    assert result.error()["event"] == "execution_interrupted"
    assert not mm.processing_interrupted()  # the flag is consumed: the next prompt runs
    final, periodic = loras / "interrupted.safetensors", loras / "interrupted-step000002.safetensors"
    assert final.is_file() and periodic.is_file()
    assert read_file(final)[1]["ss_steps"] == "3" and read_file(periodic)[1]["ss_steps"] == "2"
    assert not (loras / "interrupted-step000004.safetensors").exists()
    texts = [d["text"] for e, d in cui.server.messages if e == "progress_text" and d["node"] == "2"]
    assert texts[-1] == "interrupted at step 3 of 6: the adapter trained so far (step 3) is saved as interrupted.safetensors"
    # A new run never reuses the name (periodic files reserve it too).
    assert node_module(cui).output_target("interrupted")[2] == "interrupted_001"


# ----------------------------------------------------------------------------- names and seeds
def test_same_seed_same_adapter_names_never_overwritten(cui, loaded, loras, encoded):
    settings = dict(algorithm="loha", target="attn", steps=2, **from_latents(encoded))
    first = run(cui, loaded, save_name="seeded", **settings).result[2]
    stamp = (loras / first).stat().st_mtime_ns
    second = run(cui, loaded, save_name="seeded.safetensors", **settings).result[2]
    assert (first, second) == ("seeded.safetensors", "seeded_001.safetensors")
    assert (loras / first).stat().st_mtime_ns == stamp
    a, b = adapter_tensors(loras, first), adapter_tensors(loras, second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = adapter_tensors(loras, run(cui, loaded, save_name="seeded", seed=1, **settings).result[2])
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (loras / "seeded_002.safetensors").is_file()

    sub = run(cui, loaded, save_name="hdm/sub style", steps=1, batch_size=1, **from_latents(encoded)).result[2]
    assert sub == str(Path("hdm") / "sub style.safetensors") and (loras / "hdm" / "sub style.safetensors").is_file()
    assert sub in cui.folder_paths.get_filename_list("loras")


# ----------------------------------------------------------------------------- errors
def _non_hdm_model():
    import comfy.model_patcher

    class BaseModelLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(4, 4)

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(BaseModelLike(), load_device=cpu, offload_device=cpu)


ERRORS = {
    "non-hdm": (lambda cui, tmp: dict(model=_non_hdm_model()), r"the MODEL is not an HDM model \(its diffusion model is Linear\).*HDM Checkpoint Loader"),
    "no-data": (lambda cui, tmp: dict(dataset_folder="  "), r"no training data: set dataset_folder .* or connect 'images'"),
    "several": (lambda cui, tmp: dict(images=torch.rand(2, 64, 64, 3), captions="x"), r"several data sources are set \(dataset_folder, images\); use exactly one"),
    "no-clip": (lambda cui, tmp: dict(clip=None), r"connect the CLIP \(HDM Checkpoint Loader's outputs\)"),
    "no-vae": (lambda cui, tmp: dict(clip=None, vae=None), r"connect the CLIP and VAE"),
    "missing-folder": (lambda cui, tmp: dict(dataset_folder=str(tmp / "nope")), r"dataset folder .*nope does not exist"),
    "empty-folder": (lambda cui, tmp: dict(dataset_folder=str(tmp)), r"holds no images .* put images with same-name .txt captions there"),
    "no-captions": (lambda cui, tmp: dict(dataset_folder=str(SI.write_image_folder(tmp, [(64, 64)] * 2, captions=False)[0].parent)),
                    r"2 of 2 images in .* have no .txt caption .* missing_captions = \"empty\""),
    "no-batch-captions": (lambda cui, tmp: dict(dataset_folder="", images=torch.rand(2, 64, 64, 3)), r"the images have no captions: write one caption per line"),
    "caption-count": (lambda cui, tmp: dict(dataset_folder="", images=torch.rand(3, 64, 64, 3), captions="a\nb"), r"'captions' has 2 lines for 3 images"),
    "too-small": (lambda cui, tmp: dict(batch_size=8), r"the dataset is too small: 4 images \(4 samples with repeats\) cannot fill one batch of 8"),
    "latent-no-cond": (lambda cui, tmp: dict(dataset_folder="", latent={"samples": torch.zeros(1, 4, 8, 8)}), r"'latent' needs 'conditioning'"),
    "latent-channels": (lambda cui, tmp: dict(dataset_folder="", latent={"samples": torch.zeros(1, 16, 8, 8)}, conditioning=[[torch.zeros(1, 3, H.TE_HIDDEN), {}]]),
                        r"'latent' must hold HDM image latents \[B, 4, h, w\]"),
    "bad-name-parent": (lambda cui, tmp: dict(save_name="../evil"), r"save_name must be a file name.* not '\.\./evil'"),
    "bad-name-empty": (lambda cui, tmp: dict(save_name=" "), r"save_name must be a file name"),
    "bad-name-abs": (lambda cui, tmp: dict(save_name="/tmp/x"), r"save_name must be a file name"),
    "bad-name-chars": (lambda cui, tmp: dict(save_name="a?b"), r"save_name must be a file name"),
    "bad-algorithm-option": (lambda cui, tmp: dict(algorithm="boft", rank=3, target="attn"), r"HDM Train LyCORIS: .*boft"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_inputs_fail_with_a_clear_message_and_write_nothing(cui, loaded, loras, dataset, tmp_path, case):
    make, message = ERRORS[case]
    before = sorted(p.name for p in loras.rglob("*"))
    with pytest.raises(ValueError, match=message) as info:
        run(cui, loaded, **{"save_name": f"err_{case}", **make(cui, tmp_path)})
    assert str(info.value).startswith("HDM Train LyCORIS: ")
    assert sorted(p.name for p in loras.rglob("*")) == before


# ----------------------------------------------------------------------------- the shipped workflow
def test_training_workflow_runs_headless(cui, loras, dataset):
    """workflows/api/hdm_train_lycoris.json at test size: train on a tiny folder, sample with the result, save."""
    prompt = H.shrink(H.load_api_workflow("hdm_train_lycoris"), steps=2)
    train_id, sampler = H.find_node(prompt, "HDMTrainLyCORIS"), H.find_node(prompt, "HDMSampler")
    cui.write_dataset(prompt[train_id]["inputs"]["dataset_folder"])
    prompt[train_id]["inputs"].update(resolution=64, batch_size=1, save_every=0)
    before = set((cui.root / "output").rglob("*.png"))
    result = cui.run(prompt, {"image": (H.find_node(prompt, "HDMVAEDecode"), 0), "curve": (train_id, 1), "name": (train_id, 2)})
    assert result.ok, result.error() or result.validation
    name = result.outputs["name"]
    assert name.startswith(prompt[train_id]["inputs"]["save_name"]) and (loras / name).is_file()
    check_loss_curve(result.outputs["curve"])
    assert result.outputs["image"].shape == (1, 64, 64, 3)
    assert len(set((cui.root / "output").rglob("*.png")) - before) == 1
    assert prompt[sampler]["inputs"]["model"][0] == train_id


def test_loss_curve_edge_cases():
    """One step, non-finite losses, a flat curve: always a readable picture, never a crash."""
    import numpy as np

    from hdm_core.train.plot import loss_curve_image, smoothed

    def pixels(img):
        return torch.from_numpy(np.array(img)).float().reshape(-1, 3)

    for losses in ([0.5], [float("nan"), 1.0, float("inf"), 0.8], [0.3] * 20, list(torch.linspace(2, 0.1, 300).tolist())):
        img = loss_curve_image(losses, title="t")
        assert img.size == (640, 360) and float(pixels(img).std(0).max()) > 5
    assert float(pixels(loss_curve_image([float("nan")])).std(0).max()) > 5  # says "no finite loss was recorded"
    assert smoothed([]) == [] and smoothed([1.0, 3.0], weight=0.0) == [1.0, 3.0]
    s = smoothed([1.0] * 50)
    assert all(abs(v - 1.0) < 1e-9 for v in s)  # bias-corrected: no warm-up dip
