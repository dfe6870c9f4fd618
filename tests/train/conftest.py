"""Fixtures for the training tests (tiny models, stand-in encoders, image folders)."""

from __future__ import annotations

import pytest
import standins  # registered by tests/conftest.py
import torch


@pytest.fixture(scope="session")
def si():
    """The stand-ins module (tiny XUT, TinyVAE, TinyTextEncoder, write_image_folder)."""
    return standins


@pytest.fixture
def tiny_model():
    return standins.tiny_xut(seed=0)


@pytest.fixture
def latent_data():
    """Four 8x8 latents (64 px images) with 3-token contexts."""
    from hdm_core.train import LatentData

    gen = torch.Generator().manual_seed(7)
    latents = [torch.randn(4, 8, 8, generator=gen) for _ in range(4)]
    contexts = [torch.randn(3, standins.CTX_DIM, generator=gen) for _ in range(4)]
    return LatentData(latents, contexts)


@pytest.fixture(autouse=True)
def _few_threads():
    """The CI machine has 2 shared cores: tiny models run fastest single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
