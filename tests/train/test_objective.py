"""The rectified-flow objective, timestep distributions, per-sample randomness, optimiser rules."""

from __future__ import annotations

import math

import pytest
import torch

from hdm_core.train import OptimizerConfig, TimestepConfig
from hdm_core.train.objective import (
    draw_sample_noise,
    draw_timestep,
    flow_matching_loss,
    noisy_latents,
    sample_generator,
    velocity_target,
)
from hdm_core.train.optim import build_optimizer, fan_in, lr_factor, param_groups, set_lr


def _draws(cfg: TimestepConfig, n: int = 4000) -> torch.Tensor:
    return torch.tensor([draw_timestep(cfg, sample_generator(0, i)) for i in range(n)], dtype=torch.float64)


def test_logit_normal_timesteps_match_sigmoid_of_standard_normal():
    t = _draws(TimestepConfig())
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean())) < 0.06
    assert abs(float(logit.std()) - 1.0) < 0.05
    assert 0.0 < float(t.min()) and float(t.max()) < 1.0


def test_other_timestep_distributions():
    u = _draws(TimestepConfig(distribution="uniform"))
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.005
    shifted = _draws(TimestepConfig(distribution="uniform", shift=3.0))
    # same draws, shifted: shift·t / (1 + (shift-1)·t)
    assert torch.allclose(shifted, 3 * u / (1 + 2 * u), atol=1e-12)
    clamped = _draws(TimestepConfig(t_min=0.2, t_max=0.7), 500)
    assert float(clamped.min()) >= 0.2 and float(clamped.max()) <= 0.7
    with pytest.raises(ValueError, match="unknown timestep distribution 'beta'"):
        TimestepConfig(distribution="beta")


def test_flow_formulas_and_an_oracle_model_has_zero_loss():
    gen = torch.Generator().manual_seed(0)
    z, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([0.25, 0.9])
    x_t = noisy_latents(z, noise, t)
    assert torch.allclose(x_t[0], 0.25 * noise[0] + 0.75 * z[0])
    assert torch.equal(noisy_latents(z, noise, torch.zeros(2)), z)
    assert torch.equal(velocity_target(z, noise), noise - z)

    def oracle(x, tt, ctx, **kw):  # knows z: v = (x_t - z) / t
        assert kw["tread_rate"] == 0.0  # routing is explicitly off without a mask
        return (x - z) / tt.view(-1, 1, 1, 1)

    assert float(flow_matching_loss(oracle, z, noise, t)) < 1e-10

    def wrong(x, tt, ctx, **kw):
        return torch.zeros_like(x)

    expected = float(((noise - z) ** 2).mean())
    assert math.isclose(float(flow_matching_loss(wrong, z, noise, t)), expected, rel_tol=1e-6)


def test_loss_without_mask_never_routes_even_in_training_mode(tiny_model):
    gen = torch.Generator().manual_seed(1)
    z, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    ctx = torch.randn(2, 3, 16, generator=gen)
    t = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        eval_loss = flow_matching_loss(tiny_model, z, noise, t, ctx)
        tiny_model.train()  # XUT routes at its config rate (0.5) in training mode when tread_rate is None
        train_loss = flow_matching_loss(tiny_model, z, noise, t, ctx)
        routed = tiny_model(noisy_latents(z, noise, t), t, ctx)
    assert torch.equal(eval_loss, train_loss)
    assert not torch.allclose(routed, tiny_model.eval()(noisy_latents(z, noise, t), t, ctx))


def test_sample_draws_are_keyed_and_tread_keeps_the_reference_count():
    cfg = TimestepConfig()
    a = draw_sample_noise((4, 8, 10), cfg, sample_generator(3, 5, 1), tread_rate=0.5)
    b = draw_sample_noise((4, 8, 10), cfg, sample_generator(3, 5, 1), tread_rate=0.5)
    c = draw_sample_noise((4, 8, 10), cfg, sample_generator(3, 5, 2), tread_rate=0.5)
    assert a.t == b.t and torch.equal(a.noise, b.noise) and torch.equal(a.tread_keep, b.tread_keep)
    assert a.t != c.t and not torch.equal(a.noise, c.noise)
    assert a.tread_keep.shape == (20,) and int(a.tread_keep.sum()) == 20 - int(20 * 0.5)
    assert int(draw_sample_noise((4, 8, 10), cfg, sample_generator(0, 0), tread_rate=0.3).tread_keep.sum()) == 20 - 6
    assert draw_sample_noise((4, 8, 8), cfg, sample_generator(0, 0), tread_rate=0.0).tread_keep is None


# --------------------------------------------------------------------------- optimiser
def test_mup_fan_in_rule_matches_hdm():
    assert fan_in((1024,)) == 1024  # a bias of length out gets base/out
    assert fan_in((6144,)) == 6144
    assert fan_in(()) == 1
    assert fan_in((3072, 1024)) == 1024  # 2-D: in_features
    assert fan_in((1024, 1)) == 1  # addon_info_embs_proj.0.weight: full lr
    assert fan_in((1024, 4, 2, 2)) == 16  # patch conv
    assert fan_in((16, 16, 2)) == 32  # RoPE freqs
    params = [("a.weight", torch.nn.Parameter(torch.zeros(8, 4))), ("a.bias", torch.nn.Parameter(torch.zeros(8)))]
    groups = param_groups(params, 0.1, 0.01, mup=True)
    assert [g["base_lr"] for g in groups] == [pytest.approx(0.1 / 4), pytest.approx(0.1 / 8)]
    assert [g["names"] for g in groups] == [["a.weight"], ["a.bias"]]
    (single,) = param_groups(params, 0.1, 0.01, mup=False)
    assert single["base_lr"] == 0.1 and len(single["params"]) == 2
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups([], 0.1, 0.0)


def test_warmup_cosine_schedule_and_set_lr():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=10, scheduler="cosine", min_lr_factor=0.1)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    lin = OptimizerConfig(lr=1.0, scheduler="linear")
    assert lr_factor(50, 100, lin) == pytest.approx(0.5)
    assert lr_factor(77, 100, OptimizerConfig(scheduler="constant")) == 1.0
    params = [("w", torch.nn.Parameter(torch.zeros(2, 4)))]
    opt = build_optimizer(params, OptimizerConfig(lr=0.2, mup=True, warmup_steps=4))
    assert set_lr(opt, 1, 100, OptimizerConfig(lr=0.2, mup=True, warmup_steps=4)) == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 / 4 * 0.5)
    with pytest.raises(ValueError, match="unknown lr scheduler 'step'"):
        OptimizerConfig(scheduler="step")
