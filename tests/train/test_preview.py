"""Training previews (hdm_core.train.preview): drawing them never changes what is trained."""

from __future__ import annotations

import torch

from hdm_core.pipeline import GenerationParams
from hdm_core.train import AdapterConfig, OptimizerConfig, TrainCallbacks, TrainConfig, read_adapter, train
from hdm_core.train.preview import draw_preview_latent


def _run(si, data, out, sample=None, every=0):
    config = TrainConfig(
        steps=4, batch_size=2, seed=3, output_dir=str(out), output_name="run", save_dtype="fp32", tread_rate=0.5,
        optimizer=OptimizerConfig(lr=5e-3), sample_every=every,
    )  # fmt: skip
    result = train(si.tiny_xut(0), data, AdapterConfig(algo="lokr", dim=4, factor=4), config, callbacks=TrainCallbacks(sample=sample))
    assert result.status == "completed"
    return read_adapter(result.adapter_path).tensors


def test_previews_on_or_off_train_the_same_adapter(si, latent_data, tmp_path):
    params = GenerationParams(width=64, height=64, steps=3, cfg=3.0, seed=11)
    ctx, neg = latent_data.contexts[0], latent_data.contexts[0][:0]
    drawn = []

    def sample(step, model):
        # global RNG use inside a preview must not leak into training either
        torch.rand(7)
        drawn.append(draw_preview_latent(model, ctx, neg, params, torch.device("cpu")))

    plain = _run(si, latent_data, tmp_path / "off")
    with_previews = _run(si, latent_data, tmp_path / "on", sample, every=1)
    assert len(drawn) == 4 and all(z.shape == (1, 4, 8, 8) and torch.isfinite(z).all() for z in drawn)
    assert not torch.equal(drawn[0], drawn[-1])  # the adapter is applied: previews change as it trains
    assert plain.keys() == with_previews.keys()
    for key in plain:
        assert torch.equal(plain[key], with_previews[key]), key


def test_a_preview_is_deterministic_and_restores_modes(si):
    model = si.tiny_xut(0).train()
    ctx = torch.randn(3, si.CTX_DIM)
    params = GenerationParams(width=64, height=48, steps=2, cfg=3.0, seed=2)
    a = draw_preview_latent(model, ctx, ctx[:0], params, torch.device("cpu"))
    b = draw_preview_latent(model, ctx, ctx[:0], params, torch.device("cpu"))
    assert torch.equal(a, b) and a.shape == (1, 4, 6, 8)
    assert all(m.training for m in model.modules())
    at_cfg1 = draw_preview_latent(model, ctx, ctx[:0], GenerationParams(width=64, height=48, steps=2, cfg=1.0, seed=2), torch.device("cpu"))
    assert not torch.equal(a, at_cfg1)
