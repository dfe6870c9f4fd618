"""HDM's rectified-flow training objective and the randomness it draws.

HDM was trained on ``x_t = t·noise + (1 − t)·z`` with the model predicting the velocity
``noise − z`` under a plain MSE, ``t = sigmoid(N(0, 1))`` per sample (logit-normal, no
shift). Other timestep distributions are options, not the default.

Every random number of a training sample (its timestep, its noise, its TREAD keep-mask)
comes from a generator keyed by ``(seed, micro-step, position in the global batch)``.
That makes a run reproducible without touching the global RNG, lets a resumed run draw
exactly what the uninterrupted run would have drawn, and makes a 2-process data-parallel
run see the same samples as one process with the doubled batch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..flow import shift_timesteps
from ..tread import keep_count
from ..xut import patch_grid

TIMESTEP_DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass(frozen=True)
class TimestepConfig:
    """How training timesteps are drawn.

    ``logit_normal``: ``t = sigmoid(mean + std·N(0, 1))`` (HDM: mean 0, std 1).
    ``uniform``: ``t ~ U(0, 1)``. ``shift`` then applies the resolution shift
    ``shift·t / (1 + (shift − 1)·t)`` (1 = none, HDM's setting); ``t`` is finally clamped
    to ``[t_min, t_max]``.
    """

    distribution: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if self.distribution not in TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                f"unknown timestep distribution '{self.distribution}'; choose one of: {', '.join(TIMESTEP_DISTRIBUTIONS)}"
            )
        if self.std <= 0:
            raise ValueError(f"timestep std must be > 0, got {self.std}")
        if self.shift <= 0:
            raise ValueError(f"timestep shift must be > 0, got {self.shift}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_generator(seed: int, *key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from ``(seed, *key)`` by a stable hash (same numbers on every run and rank)."""
    digest = hashlib.blake2b(repr((int(seed),) + tuple(int(k) for k in key)).encode(), digest_size=8).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def draw_timestep(cfg: TimestepConfig, generator: torch.Generator) -> float:
    """One training timestep from ``cfg``'s distribution."""
    if cfg.distribution == "logit_normal":
        n = torch.randn((), generator=generator, dtype=torch.float64)
        t = torch.sigmoid(cfg.mean + cfg.std * n)
    else:
        t = torch.rand((), generator=generator, dtype=torch.float64)
    t = shift_timesteps(t, cfg.shift)
    return float(t.clamp(cfg.t_min, cfg.t_max))


@dataclass
class SampleNoise:
    """The random draw of one training sample."""

    t: float
    noise: torch.Tensor  # [C, H, W] float32
    tread_keep: torch.Tensor | None  # [L] bool, True = through the backbone; None = no routing


def draw_sample_noise(
    latent_shape: tuple[int, int, int],
    cfg: TimestepConfig,
    generator: torch.Generator,
    tread_rate: float = 0.0,
    patch_size: int = 2,
) -> SampleNoise:
    """Timestep, Gaussian noise and TREAD keep-mask for one sample, in a fixed draw order."""
    t = draw_timestep(cfg, generator)
    noise = torch.randn(tuple(latent_shape), generator=generator, dtype=torch.float32)
    keep = None
    if tread_rate > 0:
        _, h, w = latent_shape
        rows, cols = patch_grid(h, w, patch_size)
        num_tokens = rows * cols
        kept = keep_count(num_tokens, tread_rate)
        order = torch.rand(num_tokens, generator=generator).argsort()
        keep = torch.zeros(num_tokens, dtype=torch.bool)
        keep[order[:kept]] = True
    return SampleNoise(t, noise, keep)


def noisy_latents(z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t·noise + (1 − t)·z`` with ``t`` ``[B]``."""
    t = t.to(z.dtype).view(-1, *([1] * (z.ndim - 1)))
    return t * noise + (1 - t) * z


def velocity_target(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow velocity the model is trained to predict: ``noise − z``."""
    return noise - z


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    z: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    ctx: torch.Tensor | None = None,
    *,
    ctx_mask: torch.Tensor | None = None,
    pos_map: torch.Tensor | None = None,
    addon_info: torch.Tensor | None = None,
    tread_mask: torch.Tensor | None = None,
    input_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Plain MSE between ``model(x_t, t, …)`` and ``noise − z``, over all elements (float32).

    ``tread_mask`` ``[B, L]`` routes the marked image tokens through the backbone; without
    it routing is off (``tread_rate=0``), whatever train/eval mode the model is in. ``x_t``
    is formed in float32 and handed to the model as ``input_dtype`` (default: ``z``'s).
    """
    x_t = noisy_latents(z.float(), noise.float(), t.float())
    if input_dtype is not None:
        x_t = x_t.to(input_dtype)
    kwargs: dict[str, Any] = {"pos_map": pos_map, "addon_info": addon_info, "ctx_mask": ctx_mask}
    if tread_mask is not None:
        kwargs["tread_mask"] = tread_mask
    else:
        kwargs["tread_rate"] = 0.0
    pred = model(x_t, t, ctx, **kwargs)
    return F.mse_loss(pred.float(), velocity_target(z, noise).float())


def logit_normal_density(t: float, mean: float = 0.0, std: float = 1.0) -> float:
    """Density of the logit-normal distribution at ``t`` (for tests and plots)."""
    if not 0.0 < t < 1.0:
        return 0.0
    logit = math.log(t / (1 - t))
    return math.exp(-((logit - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
