"""TREAD token routing: when it is on, how tokens are chosen, and what rate 0 means."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hdm_core import XUT, XUTConfig, load_xut
from hdm_core import tread


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return load_xut(fixtures_dir / "tiny_weights.safetensors")


@pytest.fixture(scope="module")
def inputs(fixtures_dir):
    c = load_file(str(fixtures_dir / "tiny_cases.safetensors"))
    return c["case_a.x"], c["case_a.t"], c["case_a.ctx"]


def test_keep_count_matches_reference_rounding():
    assert tread.keep_count(64, 0.5) == 32
    assert tread.keep_count(1024, 0.25) == 768
    assert tread.keep_count(10, 0.33) == 7  # 10 - int(3.3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tread.keep_count(10, 1.0)


def test_rate_zero_and_none_are_off_in_eval(model, inputs):
    x, t, ctx = inputs
    with torch.no_grad():
        ref = model(x, t, ctx)
        state = torch.get_rng_state()
        assert torch.equal(model(x, t, ctx, tread_rate=0.0), ref)  # the reference would route at 0.5 here
        assert torch.equal(model(x, t, ctx, tread_rate=None), ref)
        assert torch.equal(torch.get_rng_state(), state), "routing off must draw no random numbers"


def test_routing_is_reproducible_with_a_generator(model, inputs):
    x, t, ctx = inputs
    with torch.no_grad():
        a = model(x, t, ctx, tread_rate=0.5, generator=torch.Generator().manual_seed(7))
        b = model(x, t, ctx, tread_rate=0.5, generator=torch.Generator().manual_seed(7))
        c = model(x, t, ctx, tread_rate=0.5, generator=torch.Generator().manual_seed(8))
        off = model(x, t, ctx)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a - off).abs().max() > 0.1


def test_random_selection_is_uniform_per_sample():
    gen = torch.Generator().manual_seed(0)
    idx = tread.random_keep_indices(4, 64, 0.5, gen)
    assert idx.shape == (4, 32)
    assert all(torch.equal(row, row.sort().values) for row in idx), "kept tokens stay in original order"
    assert len({tuple(r.tolist()) for r in idx}) == 4, "samples draw independently"
    counts = torch.zeros(64)
    for _ in range(200):
        counts.index_add_(0, tread.random_keep_indices(1, 64, 0.5, gen)[0], torch.ones(32))
    assert counts.min() > 60 and counts.max() < 140  # each token kept ~100 times of 200


def test_routed_run_equals_manual_mask(model, inputs):
    """Selection by generator and by the equivalent injected mask give the same output."""
    x, t, ctx = inputs
    idx = tread.random_keep_indices(2, 64, 0.5, torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 64, dtype=torch.bool).scatter(1, idx, True)
    with torch.no_grad():
        a = model(x, t, ctx, tread_rate=0.5, generator=torch.Generator().manual_seed(3))
        b = model(x, t, ctx, tread_mask=mask)
    assert torch.equal(a, b)


def test_training_mode_routes_at_config_rate_unless_zero(fixtures_dir, inputs):
    x, t, ctx = inputs
    m = load_xut(fixtures_dir / "tiny_weights.safetensors")
    with torch.no_grad():
        off = m(x, t, ctx)
        m.train()
        g = torch.Generator().manual_seed(1)
        routed = m(x, t, ctx, generator=g)
        explicit = m(x, t, ctx, tread_rate=0.5, generator=torch.Generator().manual_seed(1))
        train_off = m(x, t, ctx, tread_rate=0.0)
    assert torch.equal(routed, explicit)
    assert torch.equal(train_off, off)


def test_mask_errors(model, inputs):
    x, t, ctx = inputs
    uneven = torch.zeros(2, 64, dtype=torch.bool)
    uneven[0, :10] = True
    uneven[1, :11] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        model(x, t, ctx, tread_mask=uneven)
    with pytest.raises(ValueError, match="tread_mask must be"):
        model(x, t, ctx, tread_mask=torch.ones(2, 10, dtype=torch.bool))


def test_model_without_tread_blocks_refuses_routing():
    m = XUT(XUTConfig(dim=32, ctx_dim=8, heads=2, dim_head=16, mlp_dim=64, depth=1, tread_config=None)).eval()
    assert m.prev_tread_trns is None and m.post_tread_trns is None
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = m(x, 0.5, torch.randn(1, 3, 8))
        assert out.shape == x.shape
        with pytest.raises(ValueError, match="no TREAD blocks"):
            m(x, 0.5, torch.randn(1, 3, 8), tread_rate=0.5)


# ----------------------------------------------------------------------------- the seeding rule
def test_selection_seed_is_pinned_and_depends_on_every_key():
    """The rule both front-ends share: changing it silently would change every TREAD image."""
    assert tread.selection_seed(0, 0, 0, 1.0) == 3898961507648728418
    assert tread.selection_seed(42, tread.UNCOND_BRANCH, 3, 0.5) == 3819984117244854737
    base = (42, 1, 3, 0.5)
    seeds = {tread.selection_seed(*base)}
    for i, other in enumerate((43, 0, 2, 0.25)):
        changed = list(base)
        changed[i] = other
        seeds.add(tread.selection_seed(*changed))
    assert len(seeds) == 5
    # t is keyed at 1e-6: a float32 and a float64 of the same schedule entry agree
    t64 = 1 - 1 / 3
    assert tread.selection_seed(1, 0, 0, t64) == tread.selection_seed(1, 0, 0, float(torch.tensor(t64, dtype=torch.float32)))
    assert 0 <= tread.selection_seed(2**64 - 1, 1, 10**6, 1.0) < 2**63


def test_seeded_keep_mask_rows_follow_their_own_seed():
    mask = tread.seeded_keep_mask(16, 0.5, [tread.selection_seed(42, 1, 3, 0.5)])
    assert mask.int().tolist() == [[1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1]]
    seeds = [11, 12, 13]
    both = tread.seeded_keep_mask(100, 0.3, seeds)
    assert both.dtype == torch.bool and both.shape == (3, 100) and both.sum(dim=1).tolist() == [70, 70, 70]
    for i, s in enumerate(seeds):  # a row does not depend on its neighbours
        assert torch.equal(both[i], tread.seeded_keep_mask(100, 0.3, [s])[0])
    assert not torch.equal(both[0], both[1])


def test_seeded_routing_is_per_branch_row_and_step():
    cond, uncond = tread.SeededRouting(0.5, 7, tread.COND_BRANCH), tread.SeededRouting(0.5, 7, tread.UNCOND_BRANCH)
    t = torch.full((2,), 0.75)
    m = cond.keep_mask(t, 64)
    assert m.shape == (2, 64) and not torch.equal(m[0], m[1])
    assert torch.equal(m, cond.keep_mask(t, 64))
    assert torch.equal(cond.keep_mask(0.75, 64, batch=2), m)  # scalar t broadcast over the batch
    assert not torch.equal(uncond.keep_mask(t, 64), m)
    assert not torch.equal(cond.keep_mask(torch.full((2,), 0.5), 64), m)
    expected = tread.seeded_keep_mask(64, 0.5, [tread.selection_seed(7, 0, row, 0.75) for row in range(2)])
    assert torch.equal(m, expected)
