"""The shared setup of the DDP test and its worker processes."""

from __future__ import annotations

from pathlib import Path

import torch

from hdm_core.train import AdapterConfig, LatentData, OptimizerConfig, TrainConfig

ADAPTER = AdapterConfig(algo="lokr", dim=4, factor=4, preset="full", train_norm=True)


def make_data() -> LatentData:
    gen = torch.Generator().manual_seed(21)
    latents = [torch.randn(4, 8, 8, generator=gen) for _ in range(4)]
    contexts = [torch.randn(n, 16, generator=gen) for n in (3, 1, 4, 2)]  # unequal: padded + masked batches
    return LatentData(latents, contexts)


def train_config(out: Path, batch_size: int) -> TrainConfig:
    return TrainConfig(
        steps=3, batch_size=batch_size, seed=3, tread_rate=0.5, output_dir=str(out), output_name="ddp", save_dtype="fp32",
        optimizer=OptimizerConfig(lr=1e-2, warmup_steps=1),
    )  # fmt: skip
