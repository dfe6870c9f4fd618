"""Flow samplers: Euler is the reference loop bit for bit, the higher-order samplers
converge faster, noise is seeded on the CPU, CFG keeps the two branches' kwargs apart."""

from __future__ import annotations

import math

import pytest
import torch

from hdm_core.flow import (
    SAMPLERS,
    cfg_model,
    flow_timesteps,
    get_sampler,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    seeded_noise,
    shift_timesteps,
)


def _toy_model(seed: int = 0):
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed)) * 0.5

    def model(x, t):
        return torch.einsum("ij,bjhw->bihw", a, x) * (1 + t.float()[:, None, None, None]) + 0.1 * x.sin()

    return model


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 16, 24, 32, 50])
def test_euler_is_the_reference_loop_bit_for_bit(steps):
    """The reference: t = 1.0; dt = 1/steps; x = x − dt·v(x, tensor(t)); t −= dt (Python floats)."""
    model = _toy_model()
    noise = seeded_noise((2, 4, 6, 8), 123)
    seen = []

    def recording(x, t):
        seen.append(t.clone())
        return model(x, t)

    ours = sample_euler(recording, noise.clone(), flow_timesteps(steps))
    x, t, dt = noise.clone(), 1.0, 1.0 / steps
    ref_ts = []
    for _ in range(steps):
        ref_ts.append(torch.tensor(t).expand(x.size(0)))
        x = x - dt * model(x, torch.tensor(t).expand(x.size(0)))
        t -= dt
    assert torch.equal(ours, x)
    assert all(torch.equal(a, b) for a, b in zip(seen, ref_ts)) and len(seen) == steps


def _linear_problem():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.8
    x1 = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def model(x, t):  # dx/dt = A x, integrated from t = 1 down to t = 0
        return x @ a.T

    exact = x1 @ torch.linalg.matrix_exp(-a).T
    return model, x1, exact


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_higher_order_samplers_converge_faster_than_euler(name):
    model, x1, exact = _linear_problem()
    errors = {}
    for sampler in ("euler", name):
        errors[sampler] = [
            (get_sampler(sampler)(model, x1.clone(), flow_timesteps(n)) - exact).abs().max().item() for n in (8, 16, 32)
        ]
    e, h = errors["euler"], errors[name]
    assert all(hi < ei / 4 for hi, ei in zip(h, e)), errors
    euler_order = math.log2(e[1] / e[2])
    high_order = math.log2(h[1] / h[2])
    assert 0.8 < euler_order < 1.2, errors
    assert high_order > 1.7, errors


def test_samplers_are_exact_on_straight_paths():
    """For a single data point the flow is a straight line: every sampler lands on it."""
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def model(x, t):
        return noise - x0

    for name, sampler in SAMPLERS.items():
        out = sampler(model, noise.clone(), flow_timesteps(5, shift=3.0))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-12, msg=name)


def test_callback_once_per_step_with_x0_estimate():
    model = _toy_model()
    for sampler in (sample_euler, sample_heun, sample_dpmpp_2m):
        calls = []
        sampler(model, seeded_noise((1, 4, 4, 4), 0), flow_timesteps(6), callback=lambda i, t, x, x0: calls.append((i, t)))
        assert [c[0] for c in calls] == list(range(6)) and calls[0][1] == 1.0


def test_timesteps_and_shift():
    ts = flow_timesteps(4)
    assert ts.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow_timesteps(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    torch.testing.assert_close(shifted[2], torch.tensor(3 * 0.5 / (1 + 2 * 0.5), dtype=torch.float64))
    assert (shifted[1:-1] > ts[1:-1]).all()  # shift > 1 spends more steps at high noise
    assert torch.equal(shift_timesteps(ts, 1.0), ts)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow_timesteps(0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        flow_timesteps(4, shift=0)
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        get_sampler("ddim")


def test_seeded_noise_is_reproducible_and_cpu_seeded():
    a = seeded_noise((2, 4, 8, 8), 42)
    torch.manual_seed(0)
    torch.randn(100)  # the global RNG state must not matter
    b = seeded_noise((2, 4, 8, 8), 42)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert not torch.equal(a, seeded_noise((2, 4, 8, 8), 43))
    torch.manual_seed(42)  # the reference UI: torch.manual_seed(seed); torch.randn(B, 4, h, w)
    assert torch.equal(a, torch.randn(2, 4, 8, 8))
    assert torch.equal(seeded_noise((2, 4, 8, 8), 42, dtype=torch.float64), a.double())
    if torch.cuda.is_available():  # the same numbers on the GPU: drawn on the CPU, then moved
        assert torch.equal(seeded_noise((2, 4, 8, 8), 42, device="cuda").cpu(), a)


def test_cfg_model_keeps_branch_kwargs_apart():
    calls = []

    def model(x, t, ctx, tread_rate=None):
        calls.append((ctx, tread_rate))
        return torch.full_like(x, float(ctx))

    x, t = torch.zeros(1, 4, 2, 2), torch.tensor([0.5])
    v = cfg_model(model, {"ctx": 2.0, "tread_rate": None}, {"ctx": 0.5, "tread_rate": 0.5}, cfg=3.0)(x, t)
    assert calls == [(2.0, None), (0.5, 0.5)]
    torch.testing.assert_close(v, torch.full_like(x, 0.5 + 3.0 * (2.0 - 0.5)))
    calls.clear()
    cfg_model(model, {"ctx": 2.0}, {"ctx": 0.5}, cfg=1.0)(x, t)
    assert calls == [(2.0, None)]  # cfg 1: the negative pass cancels out and is skipped


def test_batched_cfg_equals_separate_passes():
    """cond + uncond in one forward (padded, masked context) gives the separate-pass result."""
    from hdm_core import camera_pos_map
    from hdm_core.flow import cfg_model, pad_contexts
    from hdm_core.testing import tiny_xut

    model = tiny_xut(0)
    gen = torch.Generator().manual_seed(0)
    for b, (tc, tu) in ((1, (7, 3)), (2, (4, 0)), (2, (5, 5))):
        x = torch.randn(b, 4, 8, 12, generator=gen)
        t = torch.full((b,), 0.6)
        common = {"addon_info": torch.randn(b, 1, generator=gen), "pos_map": camera_pos_map(8, 12, 0.1, 0.0, 1.2)[None]}
        cond = {"ctx": torch.randn(b, tc, 32, generator=gen), **common}
        uncond = {"ctx": torch.randn(b, tu, 32, generator=gen), **common}
        calls = []

        def counted(x, t, **kw):
            calls.append(x.shape[0])
            return model(x, t, **kw)

        with torch.no_grad():
            separate = cfg_model(counted, cond, uncond, 3.0)(x, t)
            batched = cfg_model(counted, cond, uncond, 3.0, batch=True)(x, t)
        assert calls == [b, b, 2 * b]
        torch.testing.assert_close(batched, separate, atol=1e-4, rtol=0)  # float rounding, x5 by CFG 3

    # Routing per branch (TREAD gamma) or different camera maps: not batchable, runs separately.
    calls.clear()
    routed = dict(uncond, tread_rate=0.5)
    with torch.no_grad():
        cfg_model(counted, cond, routed, 3.0, batch=True)(x, t)
        cfg_model(counted, cond, dict(uncond, pos_map=camera_pos_map(8, 12)[None]), 3.0, batch=True)(x, t)
    assert calls == [b, b, b, b]
    ctx, mask = pad_contexts([torch.ones(1, 2, 3), torch.ones(2, 4, 3)])
    assert ctx.shape == (3, 4, 3) and mask.tolist() == [[True, True, False, False]] + [[True] * 4] * 2
