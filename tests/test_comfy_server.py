"""The pack in a real ComfyUI server: ``main.py --cpu`` on 127.0.0.1, driven over HTTP.

One server for the module, in a temporary base directory (models, custom_nodes with this
pack linked in, user, output) and an in-memory database, so nothing is written into the
ComfyUI checkout. It checks what the frontend sees: the node list with tooltips, the
workflow templates, the error of a bad prompt in the history (the error dialog's text),
and that the same server then still renders an image.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

import hdm_comfy_harness as H  # registered by tests/conftest.py
from frontend_server import PACK_DIR_NAME, FrontendServer  # registered by tests/conftest.py


class Server(FrontendServer):
    """The frontend's server, with the harness's tiny HDM files instead of placeholders, driven over HTTP."""

    EXTRA_ARGS = ("--preview-method", "latent2rgb")

    def populate(self) -> None:
        models = self.base / "models"
        ckpt = {"unet.model." + k: v for k, v in H.tiny_xut_state_dict(0).items()}
        narrow = "decoder_ddconfig" in (self.comfyui / "comfy" / "sd.py").read_text()
        ckpt.update(H.random_vae_state_dict(0, decoder_width=4 if narrow else 1))
        H.save(ckpt, models / "checkpoints" / H.CKPT_NAME)
        H.save(H.tiny_qwen3_state_dict(0), models / "text_encoders" / H.TE_NAME)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, prompt: dict, timeout: float = 180) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish:\n{self.logtext()}")


@pytest.fixture(scope="module")
def server(comfyui_path):
    if not (comfyui_path / "main.py").is_file():
        pytest.skip("this ComfyUI checkout has no main.py")
    before = sorted(p.name for p in comfyui_path.iterdir())
    srv = Server(comfyui_path)
    try:
        srv.wait_ready_or_skip()
        yield srv
    finally:
        srv.stop()
    assert sorted(p.name for p in comfyui_path.iterdir()) == before, "the test server wrote into the ComfyUI checkout"


def test_server_lists_hdm_nodes_with_tooltips_and_templates(server):
    info = server.get("/object_info")
    for node_id in ("HDMCheckpointLoader", "HDMTextEncoderLoader", "HDMTextEncode", "HDMCamera", "HDMTreadGuidance", "HDMSampler", "HDMVAEDecode", "HDMTrainLyCORIS"):
        node = info[node_id]
        assert node["category"] == "HDM" and node["display_name"].startswith("HDM")
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), (node_id, name)
    assert H.CKPT_NAME in H.combo_options(info["HDMCheckpointLoader"]["input"]["required"]["ckpt_name"])
    # search aliases reach the frontend's node search on hosts whose schema has them (v0.33, not 0.3.64)
    import dataclasses

    from comfy_api.latest import io

    if "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}:
        assert "train lora" in info["HDMTrainLyCORIS"]["search_aliases"]
        assert "prompt expansion" in info["HDMTipoPrompt"]["search_aliases"]
        assert {"anime", "qwen"} <= set(info["HDMCheckpointLoader"]["search_aliases"])
    else:
        assert not info["HDMTrainLyCORIS"].get("search_aliases")
    templates = server.get("/workflow_templates")
    shipped = sorted(p.stem for p in H.WORKFLOWS.glob("*.json"))  # the UI workflows; workflows/api/ is not listed
    assert {"hdm_lora", "hdm_sampler_camera_tread", "hdm_tipo", "hdm_txt2img_ksampler", "hdm_train_lycoris",
            "hdm_img2img", "hdm_inpaint", "hdm_hires_fix", "hdm_regional_prompts"} <= set(shipped)
    assert sorted(templates.get(PACK_DIR_NAME, [])) == shipped


def test_error_reaches_the_history_and_the_server_keeps_working(server):
    bad = H.txt2img_prompt(text_encoder="from checkpoint")
    bad["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "hdm"}}
    entry = server.run(bad)
    assert entry["status"]["status_str"] == "error"
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "holds no text encoder" in errors[0]["exception_message"] and "Qwen3-0.6B" in errors[0]["exception_message"]

    good = H.shrink(H.load_api_workflow("hdm_sampler_camera_tread"), steps=2)
    entry = server.run(good)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1 and images[0]["type"] == "output"
    png = server.base / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    from PIL import Image

    assert Image.open(png).size == (64, 64)
