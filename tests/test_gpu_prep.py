"""Issue #13's CPU-checkable speed work: each change gives exactly the numbers of the path it replaces.

(The on-grid outputs recorded before these changes, ``tests/test_anysize.py``, and the oracle in
``tests/test_xut_parity.py`` cover the whole forward; these tests pin each piece.)
"""

from __future__ import annotations

import torch

from hdm_core import tread as tread_ops
from hdm_core.positions import axial_grid
from hdm_core.rope import AxialRoPE, RopeTables
from hdm_core.testing import tiny_xut


def test_one_rope_lookup_for_several_tensors_equals_one_per_tensor():
    rope = AxialRoPE(4, 16)
    with torch.no_grad():
        rope.freqs.add_(0.1 * torch.randn(rope.freqs.shape, generator=torch.Generator().manual_seed(0)))
    pos = axial_grid(4, 6)[None].expand(2, -1, -1)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 24 + 3, 4, 16, generator=gen)
    kv = torch.randn(2, 24 + 3, 2, 4, 16, generator=gen)
    idx = torch.tensor([[0, 3, 5, 9, 20], [1, 2, 3, 4, 23]])
    for keep in (False, True):
        for tables in (RopeTables(pos, keep), RopeTables(pos, keep).gather(idx)):
            n = tables.num_img
            q1, kv1 = q[:, : n + 3].clone(), kv[:, : n + 3].clone()
            q2, kv2 = q1.clone(), kv1.clone()
            tables.rotate_(rope, q1)
            tables.rotate_(rope, kv1[:, :, :1])
            tables.rotate_(rope, q2, kv2[:, :, :1])
            assert torch.equal(q1, q2) and torch.equal(kv1, kv2)
            assert not torch.equal(q1, q[:, : n + 3])  # it did rotate
            assert torch.equal(kv2[:, :, 1], kv[:, : n + 3, 1])  # v untouched
            assert torch.equal(q2[:, n:], q[:, n : n + 3])  # text tokens untouched


def test_tread_merge_in_place_equals_the_copying_path_and_keeps_gradients():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(2, 10 + 3, 8, generator=gen)
    idx = tread_ops.mask_to_indices(torch.rand(2, 10, generator=gen).argsort(1).argsort(1) < 6)
    full = tread_ops.with_tail(idx, 10, 3)
    assert full.shape == (2, 9) and torch.equal(full[:, 6:], torch.tensor([[10, 11, 12]] * 2))
    routed_in = tread_ops.gather_tokens(h, full)
    assert torch.equal(routed_in, torch.cat([tread_ops.gather_tokens(h[:, :10], idx), h[:, 10:]], dim=1))
    routed = routed_in * 3 + 1  # "the backbone"
    ref = torch.cat([tread_ops.scatter_tokens(h[:, :10], idx, routed[:, :6]), routed[:, 6:]], dim=1)
    with torch.no_grad():
        got = tread_ops.merge_routed(h.clone(), idx, routed, 10)
    assert torch.equal(got, ref)
    leaf = h.clone().requires_grad_(True)
    merged = tread_ops.merge_routed(leaf * 1, idx, tread_ops.gather_tokens(leaf, full) * 3 + 1, 10)
    assert torch.equal(merged.detach(), ref)
    merged.sum().backward()
    g = torch.ones_like(h)  # kept image rows and text rows: d/dh (3h + 1) = 3; dropped rows pass through: 1
    g[:, 10:] = 3
    g.scatter_(1, idx[:, :, None].expand(-1, -1, 8), 3.0)
    assert torch.equal(leaf.grad, g)


def test_routed_forward_is_the_same_with_and_without_autograd():
    model = tiny_xut(3).eval()
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(4))
    ctx = torch.randn(2, 5, model.config.ctx_dim, generator=torch.Generator().manual_seed(5))
    mask = tread_ops.seeded_keep_mask(4 * 6, 0.5, [1, 2])
    with torch.no_grad():
        fast = model(x, 0.4, ctx, tread_mask=mask)
    slow = model(x, 0.4, ctx, tread_mask=mask)
    # the sub-layers round differently with autograd (addcmul vs in-place mul/add): measured 1.1e-5
    # without routing and 1.5e-5 with it, on outputs up to 9; the routing itself is exact (test above)
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=3e-5)
    slow.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("backbone"))


def test_compile_denoiser_is_a_no_op_without_cuda():
    model = tiny_xut(1).eval()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = model(x, 0.5)
        keys = list(model.state_dict())
        enabled = model.compile_denoiser()
        after = model(x, 0.5)
    assert enabled is False  # the model is on the CPU: never compiled
    assert model._compiled_denoise is None and list(model.state_dict()) == keys
    assert torch.equal(before, after)


def test_half_precision_rotation_in_one_widened_copy_equals_the_two_temporary_path():
    from hdm_core.rope import rope_cis, rotate_

    gen = torch.Generator().manual_seed(8)
    pos = axial_grid(4, 4)[None]
    cis = rope_cis(pos, 0.3 * torch.randn(4, 4, 2, generator=gen))  # [1, 16, 4, 8]
    for dtype in (torch.float16, torch.bfloat16):
        qkv = torch.randn(2, 16 + 3, 3, 4, 16, generator=gen).to(dtype)
        target = qkv[:, :16, :2]  # q and k of the image tokens: a strided view, as SelfAttention passes it
        c = cis.view(1, 16, 1, 4, 8)
        pairs = target.unflatten(-1, (-1, 2))
        old = torch.view_as_real(torch.view_as_complex(pairs.float()) * c).flatten(-2).to(dtype)
        before = qkv.clone()
        rotate_(target, c)
        assert torch.equal(qkv[:, :16, :2], old)
        assert torch.equal(qkv[:, :16, 2], before[:, :16, 2]) and torch.equal(qkv[:, 16:], before[:, 16:])
