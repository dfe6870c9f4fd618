"""hdm_core stays importable without ComfyUI, and ComfyUI's ops/attention can drop in."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import nn

import hdm_core
from hdm_core import XUT, XUTConfig
from hdm_core.attention import sdpa_attention
from hdm_core.rope import AxialRoPE

CORE = Path(hdm_core.__file__).parent
FORBIDDEN_TOP = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "nodes", "server", "execution", "latent_preview"}
TINY = XUTConfig(dim=32, ctx_dim=16, heads=2, dim_head=16, mlp_dim=48, depth=2, enc_blocks=1, dec_blocks=2)


def test_hdm_core_never_imports_comfyui_and_imports_itself_relatively():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in FORBIDDEN_TOP, f"{path.name} imports ComfyUI module {name}"
                assert top != "hdm_core", f"{path.name} imports hdm_core absolutely ({name}); use a relative import"


class RecordingOps:
    """Stand-in for ComfyUI's ``comfy.ops`` namespaces: every layer must come from here."""

    made: list[str] = []

    class Linear(nn.Linear):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            RecordingOps.made.append("Linear")

    class Conv2d(nn.Conv2d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            RecordingOps.made.append("Conv2d")

    class LayerNorm(nn.LayerNorm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            RecordingOps.made.append("LayerNorm")

    class RMSNorm(nn.RMSNorm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            RecordingOps.made.append("RMSNorm")


def test_every_weight_layer_comes_from_operations():
    RecordingOps.made.clear()
    model = XUT(TINY, operations=RecordingOps)
    ops = (RecordingOps.Linear, RecordingOps.Conv2d, RecordingOps.LayerNorm, RecordingOps.RMSNorm)
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if own and not isinstance(mod, AxialRoPE):
            assert isinstance(mod, ops), f"{name} ({type(mod).__name__}) is not built from operations"
    # The only raw parameters are the RoPE frequencies; the only buffer is time_emb.freqs.
    raw = [n for n, m in model.named_modules() if isinstance(m, AxialRoPE)]
    assert raw and all(n.endswith(".rope") for n in raw)
    assert [n for n, _ in model.named_buffers()] == ["time_emb.freqs"]
    assert RecordingOps.made.count("Conv2d") == 1


def test_raw_parameters_follow_the_input_device_and_dtype():
    """rope.freqs / time_emb.freqs are cast at use, so weights stored elsewhere still work."""
    model = XUT(TINY).eval()
    for m in model.modules():
        if isinstance(m, AxialRoPE):
            m.freqs.data = m.freqs.data.half()  # as if a lowvram loader left them in fp16
    model.time_emb.freqs = model.time_emb.freqs.double()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 8, 8), 0.3, torch.randn(1, 3, 16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_attention_function_drops_in():
    torch.manual_seed(0)
    model = XUT(TINY).eval()
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = model(x, torch.tensor([0.2, 0.7]), ctx)
    calls = []

    def recording_attention(q, k, v, *, mask=None, transformer_options=None):
        calls.append((tuple(q.shape), tuple(k.shape), transformer_options))
        return sdpa_attention(q, k, v, mask=mask)

    model.set_attention(recording_attention)
    with torch.no_grad():
        out = model(x, torch.tensor([0.2, 0.7]), ctx, transformer_options={"tag": 1})
    torch.testing.assert_close(out, ref)
    # 1 prev + 2 enc + 2 groups x (2 self + 1 cross) + 3 post = 12 attention calls
    assert len(calls) == 1 + 2 + 2 * 3 + 3
    assert all(c[2] == {"tag": 1} for c in calls)
    assert calls[0][0] == (2, 2, 16 + 5, 16)  # [B, heads, image + text tokens, dim_head]


def test_gradients_are_exact_through_inplace_rope_and_routing():
    """Finite differences (float64) agree with autograd for inputs and RoPE frequencies."""
    torch.manual_seed(0)
    model = XUT(TINY, dtype=torch.float64).train()
    rope = model.backbone.dec_blocks[0][0].xattn.rope
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(1, 2, 16, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])

    freqs = rope.freqs.detach().clone().requires_grad_(True)

    def g(x, freqs):
        saved = rope.freqs
        try:
            del rope.freqs
            rope.freqs = freqs  # plain tensor attribute for the duration of the call
            return model(x, torch.tensor([0.4]), ctx, tread_mask=mask)
        finally:
            del rope.freqs
            rope.freqs = saved

    assert torch.autograd.gradcheck(g, (x, freqs), eps=1e-6, atol=1e-6, fast_mode=True)


def test_rope_tables_are_cached_only_when_safe():
    model = XUT(TINY).eval()
    pos = torch.rand(1, 16, 2)
    rope = model.backbone.enc_blocks[0][0].attn.rope
    with torch.no_grad():
        a = model.rope_tables(pos)
        first = a[rope]
        assert model.rope_tables(pos.clone()) is a and a[rope] is first  # same positions: reused
        assert model.rope_tables(pos + 0.1) is not a  # new positions: rebuilt
        b = model.rope_tables(pos)
        rope.freqs.add_(0.01)  # weights patched in place
        assert model.rope_tables(pos) is not b
        model.keep_rope_tables = False  # the GPU policy: nothing kept
        c = model.rope_tables(pos)
        assert model.rope_tables(pos) is not c and c[rope] is not c[rope]
        model.keep_rope_tables = None
    with torch.enable_grad():
        d = model.rope_tables(pos)
        assert model.rope_tables(pos) is not d  # never cached while recording gradients


def test_half_precision_rotation_matches_fp32():
    torch.manual_seed(0)
    model = XUT(TINY).eval()
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
    with torch.no_grad():
        ref = model(x, 0.5, ctx)
        model16 = XUT(TINY, dtype=torch.bfloat16).eval()
        model16.load_state_dict(model.state_dict())
        out = model16(x.bfloat16(), 0.5, ctx.bfloat16())
    assert float((out.float() - ref).pow(2).mean().sqrt() / ref.std()) < 0.05


def test_rope_cache_under_inference_mode():
    """ComfyUI builds, patches and runs models under inference mode (no version counters)."""
    with torch.inference_mode():
        model = XUT(TINY).eval()
        x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
        a = model(x, 0.5, ctx)
        rope = model.backbone.enc_blocks[0][0].attn.rope
        rope.freqs.copy_(rope.freqs + 0.5)  # an in-place weight patch
        b = model(x, 0.5, ctx)
        model.clear_rope_cache()
        c = model(x, 0.5, ctx)
    assert not torch.equal(a, b)
    assert torch.equal(b, c)


def test_dtype_casts_keep_time_frequencies_in_float32():
    model = XUT(TINY)
    before = model.time_emb.freqs.clone()
    model = model.to(torch.bfloat16)
    assert model.in_patch.proj.weight.dtype == torch.bfloat16
    assert model.time_emb.freqs.dtype == torch.float32 and torch.equal(model.time_emb.freqs, before)
    model.half().float()
    assert torch.equal(model.time_emb.freqs, before)
    assert model.to("meta").time_emb.freqs.device.type == "meta"
