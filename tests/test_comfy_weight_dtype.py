"""HDM Checkpoint Loader's weight_dtype: the storage dtype of the diffusion model, as Load Diffusion Model sets it.

On the CPU ComfyUI computes in float32 whatever the storage (manual cast), so fp32 must equal
the default bit for bit, and bf16 / fp8 storage must only add their rounding error. The numbers
in the assertions were measured on the tiny test model (3 Euler steps at 64 px, cfg 3).
"""

from __future__ import annotations

import pytest
import torch

import hdm_comfy_harness as H  # registered by tests/conftest.py


def sample(cui, weight_dtype: str | None) -> tuple[torch.Tensor, torch.dtype]:
    prompt = H.txt2img_prompt(seed=3, steps=3)
    if weight_dtype is not None:
        prompt["1"]["inputs"]["weight_dtype"] = weight_dtype
    result = cui.run(prompt, {"latent": ("7", 0), "model": ("1", 0)})
    assert result.ok, result.error() or result.validation
    model = result.outputs["model"]
    # a backbone Linear (the conditioning path stays float32 whatever the storage dtype: hdm_core.xut.FLOAT32_PREFIXES)
    linear = next(p for n, p in model.model.diffusion_model.named_parameters() if n.endswith("attn.qkv.weight"))
    return result.outputs["latent"]["samples"].float(), linear.dtype


@pytest.fixture(scope="module")
def reference(cui):
    return sample(cui, None)


def test_loader_offers_unet_loaders_choices_as_a_last_optional_input(cui):
    spec = cui.nodes.NODE_CLASS_MAPPINGS["HDMCheckpointLoader"].INPUT_TYPES()
    assert list(spec["required"]) == ["ckpt_name", "text_encoder"]  # old workflows fill these two by position
    assert list(spec["optional"]) == ["weight_dtype"]
    options = H.combo_options(spec["optional"]["weight_dtype"])
    assert options[:4] == H.combo_options(cui.nodes.NODE_CLASS_MAPPINGS["UNETLoader"].INPUT_TYPES()["required"]["weight_dtype"])
    assert options[4:] == ["fp16", "bf16", "fp32"]
    assert spec["optional"]["weight_dtype"][1]["default"] == "default"


def test_fp32_equals_default_on_cpu(cui, reference):
    latent, dtype = reference
    fp32, fp32_dtype = sample(cui, "fp32")
    assert dtype == fp32_dtype == torch.float32
    assert torch.equal(fp32, latent)


@pytest.mark.parametrize(
    "weight_dtype, stored, max_rel",
    [
        # measured on v0.33 (CPU): bf16 0.0013, fp16 0.0003, fp8_e4m3fn 0.021 (also _fast: no fp8 matmul on the CPU), fp8_e5m2 0.063
        ("bf16", torch.bfloat16, 0.005),
        ("fp16", torch.float16, 0.002),
        ("fp8_e4m3fn", torch.float8_e4m3fn, 0.05),
        ("fp8_e4m3fn_fast", torch.float8_e4m3fn, 0.05),
        ("fp8_e5m2", torch.float8_e5m2, 0.12),
    ],
)
def test_lower_precision_storage_runs_and_stays_close(cui, reference, weight_dtype, stored, max_rel):
    latent, _ = reference
    got, dtype = sample(cui, weight_dtype)
    assert dtype == stored, f"{weight_dtype}: weights are stored as {dtype}"
    assert torch.isfinite(got).all()
    rel = float((got - latent).abs().max() / latent.abs().max())
    print(f"{weight_dtype}: max |diff| / max |fp32| = {rel:.4f}")
    assert rel < max_rel
    assert not torch.equal(got, latent), f"{weight_dtype} storage changed nothing: was it applied?"
