"""Every algorithm round-trips: the trained model's output equals stock ComfyUI's LoRA path.

The adapter is trained with the real engine, saved, then loaded exactly as ComfyUI's
LoraLoader does it: ``comfy.utils.load_torch_file`` → ``comfy.sd.load_lora_for_models``
(``model_lora_keys_unet`` on a model whose ``diffusion_model`` is the XUT, ``load_lora``,
``ModelPatcher.add_patches``) → ``ModelPatcher.patch_model`` (``comfy.lora.calculate_weight``
and ``comfy.weight_adapter``). Every key must map (no "lora key not loaded") and the patched
XUT must reproduce the trained output. Run with ``COMFYUI_PATH=~/ComfyUI-0.3.64`` for the
older line.
"""

from __future__ import annotations

import logging

import pytest
import torch

from hdm_core.train import AdapterConfig, OptimizerConfig, TrainConfig, Trainer, convert_hdm_adapter
from hdm_core.train.adapters import LORA_PREFIX, lora_name, rename_hdm_key

CASES = {
    "lora": dict(algo="lora", dim=4, alpha=2.0),
    "locon-full": dict(algo="locon", dim=4, alpha=4.0, preset="full"),
    "loha": dict(algo="loha", dim=4, alpha=2.0, preset="attn"),
    "lokr-hdm-recipe": dict(algo="lokr", factor=4, full_matrix=True, train_norm=True, preset="full"),
    "lokr-decompose": dict(algo="lokr", dim=2, alpha=1.0, factor=4, decompose_both=True, preset="full"),
    "dora": dict(algo="dora", dim=4, alpha=4.0),
    "loha-dora": dict(algo="loha", dim=4, alpha=4.0, weight_decompose=True),
    "lokr-dora": dict(algo="lokr", factor=4, dim=2, weight_decompose=True),
    "glora": dict(algo="glora", dim=4, alpha=4.0),
    "diag-oft": dict(algo="diag-oft", dim=8),
    "diag-oft-constraint": dict(algo="diag-oft", dim=8, constraint=1e-4),
    "boft": dict(algo="boft", dim=8, preset="full"),
    "boft-rescaled": dict(algo="boft", dim=8, rescaled=True, constraint=1e-4),
    "full": dict(algo="full", preset="full", train_norm=True),
}


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def comfy_patched_output(comfy_root, model, lora_sd, inputs, strength=1.0):
    """(output of the XUT patched by ComfyUI's LoRA machinery, ComfyUI's warnings, patched keys)."""
    import comfy.model_patcher
    import comfy.sd

    class ModelConfig:
        unet_config: dict = {}

    class BaseModelLike(torch.nn.Module):  # the layout model_lora_keys_unet reads: .diffusion_model
        def __init__(self, xut):
            super().__init__()
            self.diffusion_model = xut
            self.model_config = ModelConfig()

    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(BaseModelLike(model), load_device=cpu, offload_device=cpu)
    handler = _Warnings()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, strength, 0.0)
    finally:
        root.removeHandler(handler)
    patched.patch_model(device_to=cpu)
    try:
        with torch.no_grad():
            out = model(*inputs[:3], **inputs[3])
    finally:
        patched.unpatch_model(device_to=cpu)
    return out, handler.messages, set(patched.patches)


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    return x, torch.tensor([0.35, 0.8]), torch.randn(2, 3, 16, generator=gen), {"tread_rate": 0.0}


def _expected_patch_keys(adapter, model) -> set[str]:
    keys = set()
    modules = dict(model.named_modules())
    for path in adapter.module_paths:
        keys.add(f"diffusion_model.{path}.weight")
        bias_patched = adapter.config.algo == "full" or isinstance(modules[path], torch.nn.LayerNorm)
        if bias_patched and modules[path].bias is not None:
            keys.add(f"diffusion_model.{path}.bias")
    return keys


@pytest.mark.parametrize("case", list(CASES))
def test_trained_adapter_renders_identically_through_comfyui(case, comfyui_path, si, latent_data, inputs, tmp_path):
    import comfy.utils

    model = si.tiny_xut(seed=0)
    with torch.no_grad():
        base = model(*inputs[:3], **inputs[3])
    cfg = TrainConfig(
        steps=3, batch_size=2, seed=1, tread_rate=0.5, output_dir=str(tmp_path), output_name=case, save_dtype="fp32",
        optimizer=OptimizerConfig(lr=2e-2, max_grad_norm=None),
    )  # fmt: skip
    trainer = Trainer(model, latent_data, AdapterConfig(**CASES[case]), cfg)
    result = trainer.run()
    assert result.status == "completed" and result.adapter_path.name == f"{case}.safetensors"
    with torch.no_grad():
        assert torch.equal(model(*inputs[:3], **inputs[3]), base)  # the engine left the model as it was
        with trainer.adapter.patched():
            trained = model(*inputs[:3], **inputs[3])
    effect = float((trained - base).abs().max())
    assert effect > 2e-3, f"training changed the output by only {effect}: the round-trip check would be blind"

    lora_sd = comfy.utils.load_torch_file(str(result.adapter_path), safe_load=True)
    assert all(k.startswith(LORA_PREFIX + "_") for k in lora_sd)
    out, warnings, patched = comfy_patched_output(comfyui_path, model, lora_sd, inputs)
    assert not [w for w in warnings if "lora key not loaded" in w or "NOT LOADED" in w], warnings
    assert patched == _expected_patch_keys(trainer.adapter, model)
    err = float((out - trained).abs().max())
    assert err < 2e-5 * max(1.0, float(trained.abs().max())), f"{case}: ComfyUI differs by {err} (adapter effect {effect})"
    with torch.no_grad():
        assert torch.equal(model(*inputs[:3], **inputs[3]), base)  # ComfyUI's unpatch restored the weights

    if CASES[case].get("constraint"):
        # the export rewrites OFT alpha to constraint·out_dim; LyCORIS' raw alpha renders differently in ComfyUI
        raw = dict(lora_sd)
        for k in raw:
            if k.endswith(".alpha"):
                raw[k] = torch.tensor(CASES[case]["constraint"])
        wrong, _, _ = comfy_patched_output(comfyui_path, model, raw, inputs)
        assert float((wrong - trained).abs().max()) > 100 * max(err, 1e-7)


def test_hdm_trainer_pt_files_convert_and_render_identically(comfyui_path, si, inputs, tmp_path):
    """HDM's own trainer: LyCORIS defaults (prefix 'lycoris') on a wrapper whose XUT is .model, saved with torch.save."""
    import comfy.utils
    from lycoris import create_lycoris
    from lycoris.wrapper import LycorisNetwork

    from hdm_core.train.adapters import _LYCORIS_CLASS_STATE, _LYCORIS_LOCK

    class Wrapper(torch.nn.Module):  # XUDiTConditionModel-like
        def __init__(self, xut):
            super().__init__()
            self.model = xut

    model = si.tiny_xut(seed=2)
    with torch.no_grad():
        base = model(*inputs[:3], **inputs[3])
    with _LYCORIS_LOCK:
        saved = {n: getattr(LycorisNetwork, n) for n in _LYCORIS_CLASS_STATE}
        try:
            LycorisNetwork.apply_preset({
                "lora_prefix": "lycoris", "target_module": ["Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"],
                "target_name": [], "exclude_name": [], "module_algo_map": {}, "name_algo_map": {},
            })  # fmt: skip
            net = create_lycoris(Wrapper(model), algo="lokr", factor=4, full_matrix=True, train_norm=True)
        finally:
            for n, v in saved.items():
                setattr(LycorisNetwork, n, v)
    net.apply_to()
    try:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            hdm_out = model(*inputs[:3], **inputs[3])
        sd = dict(net.state_dict())
    finally:
        net.restore()
    assert any(k.startswith("lycoris_model_backbone_enc_blocks_0_0_attn_qkv.lokr_w") for k in sd)
    sd["model.in_patch.proj.weight"] = model.in_patch.proj.weight.detach().clone()  # a trainable full param: dropped
    pt = tmp_path / "epoch=1.pt"
    torch.save(sd, pt)

    report = convert_hdm_adapter(pt, tmp_path / "converted.safetensors", module_paths=[n for n, _ in model.named_modules() if n])
    assert report.dropped == ["model.in_patch.proj.weight"] and report.modules == 38
    lora_sd = comfy.utils.load_torch_file(str(report.path), safe_load=True)
    out, warnings, _ = comfy_patched_output(comfyui_path, model, lora_sd, inputs)
    assert not [w for w in warnings if "not loaded" in w.lower()], warnings
    assert float((hdm_out - base).abs().max()) > 1e-2
    assert float((out - hdm_out).abs().max()) < 2e-5 * max(1.0, float(hdm_out.abs().max()))


def test_converter_names_fit_the_released_model(fixtures_dir):
    """Every module of HDM's LoKr fine-tune (manifest from the real run) maps onto our XUT's module names."""
    import json

    from hdm_core import HDM_XUT_SMALL, XUT

    manifest = json.loads((fixtures_dir / "lycoris_lokr_manifest.json").read_text())
    with torch.device("meta"):
        full = XUT(HDM_XUT_SMALL, device="meta")
    known = {lora_name(n) for n, _ in full.named_modules() if n}
    renamed = [rename_hdm_key(e["key"]) for e in manifest["state_dict"]]
    assert None not in renamed
    modules = {k.split(".", 1)[0] for k in renamed}
    assert len(modules) == manifest["num_lycoris_modules"] == 107
    assert modules <= known


def test_pickled_objects_are_refused(tmp_path):
    import collections

    from hdm_core.train import AdapterError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"lycoris_model_x.alpha": Evil()}, bad)
    with pytest.raises(AdapterError, match=r"weights_only=True\) refused"):
        convert_hdm_adapter(bad, tmp_path / "out.safetensors")
    empty = tmp_path / "empty.pt"
    torch.save(collections.OrderedDict(foo=torch.zeros(1)), empty)
    with pytest.raises(AdapterError, match="no LyCORIS adapter tensors found"):
        convert_hdm_adapter(empty, tmp_path / "out.safetensors")
