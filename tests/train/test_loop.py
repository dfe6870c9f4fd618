"""The training engine: learning, exact resume, NaN stop, interrupt, failure safety, precision modes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hdm_core.train import (
    AdapterConfig,
    LatentData,
    OptimizerConfig,
    TimestepConfig,
    TrainCallbacks,
    TrainConfig,
    Trainer,
    TrainingError,
    read_adapter,
    train,
)
from hdm_core.train.objective import draw_sample_noise, flow_matching_loss, sample_generator


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        steps=6, batch_size=2, seed=5, output_dir=str(tmp_path), output_name="run", save_dtype="fp32",
        optimizer=OptimizerConfig(lr=5e-3, warmup_steps=2),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _eval_loss(model, data, adapter=None) -> float:
    """Loss on fixed draws (4 per item, tread off) — a deterministic yardstick."""
    total, n = 0.0, 0
    with torch.no_grad():
        ctx = adapter.patched() if adapter is not None else torch.no_grad()
        with ctx:
            for i in range(len(data)):
                z, c = data.latents[i][None], data.contexts[i][None]
                for k in range(4):
                    d = draw_sample_noise(tuple(z.shape[1:]), TimestepConfig(), sample_generator(999, i, k))
                    total += float(flow_matching_loss(model, z, d.noise[None], torch.tensor([d.t]), c))
                    n += 1
    return total / n


def test_loss_falls_on_a_tiny_dataset(tiny_model, latent_data, tmp_path):
    before = _eval_loss(tiny_model, latent_data)
    trainer = Trainer(
        tiny_model, latent_data, AdapterConfig(algo="lokr", dim=4, factor=4, preset="full"),
        _config(tmp_path, steps=40, tread_rate=0.5, optimizer=OptimizerConfig(lr=1e-2, warmup_steps=4)),
    )  # fmt: skip
    result = trainer.run()
    after = _eval_loss(tiny_model, latent_data, trainer.adapter)
    assert result.status == "completed" and len(result.loss_history) == 40
    assert after < 0.8 * before, (before, after)
    assert _eval_loss(tiny_model, latent_data) == before  # the base model itself is untouched


def _stop_after(n):
    seen = []
    return TrainCallbacks(progress=seen.append, should_stop=lambda: len(seen) >= n), seen


def _adapter_tensors(path):
    return read_adapter(path).tensors


@pytest.mark.parametrize("mixed", ["no", "bf16"])
def test_resume_reproduces_the_uninterrupted_run(si, latent_data, tmp_path, mixed):
    adapter = AdapterConfig(algo="lokr", dim=2, factor=4, preset="attn-mlp", train_norm=True)
    cfg = _config(tmp_path / "a", grad_accum=2, tread_rate=0.5, mixed_precision=mixed,
                  optimizer=OptimizerConfig(lr=0.05, mup=True, warmup_steps=2))  # fmt: skip
    straight = train(si.tiny_xut(1), latent_data, adapter, cfg)

    cb, _ = _stop_after(3)
    part = train(si.tiny_xut(1), latent_data, adapter, dataclasses.replace(cfg, output_dir=str(tmp_path / "b")), callbacks=cb)
    assert part.status == "interrupted" and part.step == 3 and part.state_path.is_file()
    resumed = train(
        si.tiny_xut(1), latent_data, adapter, dataclasses.replace(cfg, output_dir=str(tmp_path / "b")),
        resume_from=part.state_path,
    )  # fmt: skip
    assert resumed.status == "completed" and resumed.step == 6
    assert resumed.loss_history == straight.loss_history
    a, b = _adapter_tensors(straight.adapter_path), _adapter_tensors(resumed.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="already at step 6; raise steps above 6"):
        Trainer(si.tiny_xut(1), latent_data, adapter, cfg, resume_from=resumed.state_path)
    with pytest.raises(TrainingError, match="resume with the same adapter settings"):
        Trainer(si.tiny_xut(1), latent_data, dataclasses.replace(adapter, dim=4), cfg, resume_from=part.state_path)


class _PoisonedData:
    """Wraps a dataset; from the ``at``-th batch on its latents are NaN (or it raises)."""

    def __init__(self, data, at, mode="nan"):
        self.data, self.at, self.mode, self.calls = data, at, mode, 0

    def __len__(self):
        return len(self.data)

    def repeats(self, i):
        return self.data.repeats(i)

    def bucket(self, i):
        return self.data.bucket(i)

    def batch(self, indices, rngs):
        self.calls += 1
        batch = self.data.batch(indices, rngs)
        if self.calls > self.at:
            if self.mode == "raise":
                raise OSError("disk vanished")
            batch.latents = torch.full_like(batch.latents, float("nan"))
        return batch


def test_nan_stops_cleanly_and_keeps_the_last_good_adapter(si, latent_data, tmp_path):
    adapter = AdapterConfig(algo="lora", dim=4)
    cfg = _config(tmp_path / "nan", steps=10)
    result = train(si.tiny_xut(0), _PoisonedData(latent_data, at=3), adapter, cfg)
    assert result.status == "nan" and result.step == 3 and len(result.loss_history) == 3
    assert "the loss became nan at step 4; stopped before applying that update" in result.message
    cb, _ = _stop_after(3)
    clean = train(si.tiny_xut(0), latent_data, adapter, dataclasses.replace(cfg, output_dir=str(tmp_path / "ok")), callbacks=cb)
    got, want = _adapter_tensors(result.adapter_path), _adapter_tensors(clean.adapter_path)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.isfinite(v).all() for v in got.values())


def test_a_failing_run_leaves_the_model_exactly_as_it_was(si, latent_data, tmp_path):
    model = si.tiny_xut(0)
    model.in_patch.proj.weight.requires_grad_(False)  # a mixed set of flags must come back as it was
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.5]), torch.randn(1, 3, 16)
    with torch.no_grad():
        base = model(x, t, ctx, tread_rate=0.0)
    with pytest.raises(OSError, match="disk vanished"):
        train(model, _PoisonedData(latent_data, at=2, mode="raise"), AdapterConfig(algo="full", preset="full"),
              _config(tmp_path, gradient_checkpointing=True))  # fmt: skip
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and all(m.training for m in model.modules()) and model.gradient_checkpointing is False
    assert not any("forward" in m.__dict__ or "_lycoris_wrappers" in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, tread_rate=0.0), base)


def test_interrupt_saves_and_reports(si, latent_data, tmp_path):
    cb, seen = _stop_after(2)
    saved = []
    cb.on_save = lambda path, step: saved.append((path.name, step))
    result = train(si.tiny_xut(0), latent_data, AdapterConfig(algo="loha", dim=2), _config(tmp_path, steps=50, save_every=1), callbacks=cb)
    assert result.status == "interrupted" and result.step == 2 and [s.step for s in seen] == [1, 2]
    assert saved == [("run-step000001.safetensors", 1), ("run-step000002.safetensors", 2), ("run.safetensors", 2)]
    assert seen[0].total_steps == 50 and seen[0].loss > 0 and seen[0].lr > 0 and seen[0].steps_per_second > 0
    meta = read_adapter(result.adapter_path).metadata
    assert meta["ss_steps"] == "2" and meta["hdm_tread_rate"] == "0.0" and meta["ss_num_train_images"] == "4"


def test_gradient_checkpointing_gives_the_same_gradients(si, latent_data, tmp_path):
    grads = []
    for ckpt in (False, True):
        trainer = Trainer(si.tiny_xut(0), latent_data, AdapterConfig(algo="lokr", dim=4, factor=4, preset="full"),
                          _config(tmp_path, gradient_checkpointing=ckpt, tread_rate=0.5))  # fmt: skip
        with trainer.session():
            assert trainer.model.gradient_checkpointing is ckpt
            trainer.backward_micro_batches()
        grads.append({n: p.grad.clone() for n, p in trainer.adapter.trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7) for n in grads[0])
    assert sum(float(g.abs().sum()) for g in grads[0].values()) > 0


def test_mixed_precision_modes(si, latent_data, tmp_path):
    for mixed in ("bf16", "fp16"):
        result = train(si.tiny_xut(0), latent_data, AdapterConfig(algo="lora"), _config(tmp_path / mixed, steps=3, mixed_precision=mixed))
        assert result.status == "completed" and all(torch.isfinite(torch.tensor(result.loss_history)))
    low = si.tiny_xut(0).to(torch.bfloat16)
    result = train(low, latent_data, AdapterConfig(algo="lokr", factor=4), _config(tmp_path / "low", steps=2, mixed_precision="bf16"))
    assert result.status == "completed"
    with pytest.raises(TrainingError, match='weights are bf16; train with mixed_precision = "bf16"'):
        Trainer(low, latent_data, AdapterConfig(), _config(tmp_path))
    with torch.inference_mode():
        frozen = si.tiny_xut(0)
    with pytest.raises(TrainingError, match="inference tensors .* clone the model outside inference mode"):
        Trainer(frozen, latent_data, AdapterConfig(), _config(tmp_path))


def test_training_works_under_inference_mode_and_samples_see_the_adapter(si, latent_data, tmp_path):
    model = si.tiny_xut(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([0.5]), torch.randn(1, 3, 16)
    with torch.no_grad():
        base = model(x, t, ctx, tread_rate=0.0)
    seen = []

    def sample(step, m):
        assert m is model and not torch.is_grad_enabled()
        seen.append((step, float((m(x, t, ctx, tread_rate=0.0) - base).abs().max())))

    with torch.inference_mode():  # how ComfyUI runs nodes
        result = train(model, latent_data, AdapterConfig(algo="lora"), _config(tmp_path, steps=4, sample_every=2),
                       callbacks=TrainCallbacks(sample=sample))  # fmt: skip
    assert result.status == "completed"
    assert [s for s, _ in seen] == [2, 4] and all(d > 0 for _, d in seen)


def test_init_adapter_starts_from_a_file_and_mup_groups(si, latent_data, tmp_path):
    adapter = AdapterConfig(algo="glora", dim=2)
    first = train(si.tiny_xut(0), latent_data, adapter, _config(tmp_path / "a", steps=2))
    trainer = Trainer(si.tiny_xut(0), latent_data, adapter, _config(tmp_path / "b", optimizer=OptimizerConfig(mup=True)),
                      init_adapter=first.adapter_path)  # fmt: skip
    exported, saved = trainer.adapter.export_tensors(), _adapter_tensors(first.adapter_path)
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    assert len(trainer.optimizer.param_groups) == len(trainer.adapter.trainable_parameters())
    with pytest.raises(TrainingError, match="different adapter settings"):
        Trainer(si.tiny_xut(0), latent_data, AdapterConfig(algo="glora", dim=4), _config(tmp_path / "c"), init_adapter=first.adapter_path)


def test_bad_training_settings_are_explained():
    with pytest.raises(ValueError, match=r"tread_rate must be in \[0, 1\) \(0 = off, 0.5 = HDM pre-training\)"):
        TrainConfig(tread_rate=1.0)
    with pytest.raises(ValueError, match="mixed_precision must be one of no, bf16, fp16"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="unknown training option\\(s\\): epochs"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="output_name must be a plain file name"):
        TrainConfig(output_name="a/b")


def test_padded_text_batches_train(si, tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = LatentData([torch.randn(4, 8, 8, generator=gen) for _ in range(4)],
                      [torch.randn(n, 16, generator=gen) for n in (1, 3, 0, 5)])  # fmt: skip
    result = train(si.tiny_xut(0), data, AdapterConfig(algo="lora"), _config(tmp_path, steps=3, tread_rate=0.5))
    assert result.status == "completed"


def test_gradient_accumulation_averages_the_micro_batches(si, latent_data, tmp_path):
    adapter = AdapterConfig(algo="lora", dim=4, preset="full")
    acc = Trainer(si.tiny_xut(0), latent_data, adapter, _config(tmp_path, batch_size=1, grad_accum=2, tread_rate=0.5))
    with acc.session():
        acc.backward_micro_batches()
    want = {n: p.grad.clone() for n, p in acc.adapter.trainable_parameters()}
    acc.optimizer.zero_grad(set_to_none=True)
    manual = {n: torch.zeros_like(g) for n, g in want.items()}
    with acc.session():
        for k in (0, 1):
            acc.micro_batch_loss(k).backward()
            for n, p in acc.adapter.trainable_parameters():
                manual[n] += p.grad / 2
            acc.optimizer.zero_grad(set_to_none=True)
    assert all(torch.allclose(want[n], manual[n], rtol=1e-5, atol=1e-7) for n in want)
