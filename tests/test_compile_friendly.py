"""torch.compile on the XUT without graph breaks or recompile storms on a CPU.

ComfyUI's stock TorchCompileModel compiles the whole diffusion model; ``--compile`` / ``compile_blocks``
compiles each transformer block. On CPU the XUT keeps RoPE tables between calls (a cache checked with
``torch.equal`` and ``torch.is_inference_mode_enabled``): traced, those were graph breaks (12 in
``benchmarks/comfy_gpu.py --smoke --smoke-compile``), and the block-by-block filling of the kept
tables made every compiled block recompile until dynamo's limit (then it ran eager, 13× slower
than eager there). Dynamo's "eager" backend traces exactly as inductor does, in seconds.
"""

from __future__ import annotations

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from hdm_core.pipeline import GenerationParams, guidance_kwargs, initial_noise, sample_latents
from hdm_core.testing import tiny_xut


def test_whole_model_compile_has_no_graph_break_on_cpu():
    torch._dynamo.reset()
    counters.clear()
    model = tiny_xut(0)
    compiled = torch.compile(model, backend="eager")
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    with torch.inference_mode():  # as ComfyUI samples
        for t in (0.9, 0.5, 0.2):
            out = compiled(x, torch.tensor([t]), ctx)
            torch.testing.assert_close(out, model(x, torch.tensor([t]), ctx))
    assert sum(counters["graph_break"].values()) == 0, list(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_blocks_sampling_stays_under_the_recompile_limit_on_cpu():
    torch._dynamo.reset()
    counters.clear()
    model = tiny_xut(0)
    model.compile_blocks(backend="eager")
    assert model.keep_rope_tables is False
    params = GenerationParams(prompt="a", width=64, height=64, steps=6, cfg=3.0, seed=1, tread_gamma=0.0, tread_gamma_uncond=0.0)
    with torch.inference_mode():
        cond, uncond = guidance_kwargs(torch.randn(1, 5, 32), torch.randn(1, 3, 32), params, torch.device("cpu"))
        got = sample_latents(model, initial_noise(1, 64, 64, 1), cond, uncond, params)
        want = sample_latents(tiny_xut(0), initial_noise(1, 64, 64, 1), cond, uncond, params)
    torch.testing.assert_close(got, want)
    # one graph per block kind (self-only / with cross-attention) and prompt length, not per call
    assert counters["stats"]["unique_graphs"] < torch._dynamo.config.recompile_limit
