"""Aspect-ratio buckets, crops and the position maps that go with them.

HDM's latents are 1/8 of the image and its patches 2×2 latents, so image sides are
multiples of 16 px. Two ways to fit an image:

* **bucket** (aspect-ratio bucketing): a set of ``w × h`` sizes in 16-px steps with about
  ``resolution²`` pixels; each image goes to the bucket nearest its aspect ratio, is
  resized to cover it and the small excess is cropped.
* **square** (HDM's shifted square crop): the short side is resized to ``resolution``
  and a ``resolution²`` square is cut from the long side at a random offset.

Either way the crop keeps the *full* image's coordinates: the position map is the full
image's aspect-aware grid cut to the crop window, so the model learns where in the
picture the crop sits. The map is built at pixel resolution with
:func:`hdm_core.positions.crop_pos_map` and area-averaged ×8 to latent resolution, as HDM's
training did; ``addon_info`` is ``log(width / height)`` of the full (resized) image.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..latents import VAE_SCALE
from ..positions import crop_pos_map

STEP = 16  # pixels: VAE factor 8 × patch size 2
CROP_MODES = ("bucket", "square")


@dataclass(frozen=True)
class BucketConfig:
    mode: str = "bucket"
    resolution: int = 1024
    max_aspect: float = 2.0
    random_crop: bool = True

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"unknown crop mode '{self.mode}'; choose one of: {', '.join(CROP_MODES)}")
        if self.resolution < STEP or self.resolution % STEP:
            raise ValueError(f"resolution must be a multiple of {STEP} px, got {self.resolution}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_buckets(resolution: int, max_aspect: float = 2.0, step: int = STEP) -> list[tuple[int, int]]:
    """``(width, height)`` sizes in ``step``-px steps, area ≤ ``resolution²``, aspect ≤ ``max_aspect``."""
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    w = step
    while w <= resolution * max_aspect:
        h = (area // w) // step * step
        if h >= step and max(w / h, h / w) <= max_aspect + 1e-9:
            buckets.add((w, h))
            buckets.add((h, w))
        w += step
    return sorted(buckets, key=lambda wh: (wh[0] / wh[1], wh[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log space) to ``width/height``; ties → larger."""
    target = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - target), -wh[0] * wh[1]))


@dataclass(frozen=True)
class CropPlan:
    """Resize the image to ``resized`` then cut ``size`` at ``(left, top)`` (all in pixels)."""

    resized: tuple[int, int]  # (width, height)
    left: int
    top: int
    size: tuple[int, int]  # (width, height), multiples of 16

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.size[1] // VAE_SCALE, self.size[0] // VAE_SCALE

    @property
    def addon_info(self) -> float:
        return math.log(self.resized[0] / self.resized[1])


def target_size(width: int, height: int, cfg: BucketConfig, buckets: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """The crop size an image of ``width × height`` trains at."""
    if cfg.mode == "square":
        return cfg.resolution, cfg.resolution
    return nearest_bucket(width, height, buckets or make_buckets(cfg.resolution, cfg.max_aspect))


def plan_crop(
    width: int,
    height: int,
    size: tuple[int, int],
    cfg: BucketConfig,
    rng: random.Random | None,
) -> CropPlan:
    """Resize so the image covers ``size`` (square mode: short side = resolution), then crop.

    The crop offset is drawn from ``rng`` when ``cfg.random_crop`` (else centred).
    """
    bw, bh = size
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
    free_x, free_y = rw - bw, rh - bh
    if cfg.random_crop and rng is not None:
        left, top = rng.randint(0, free_x), rng.randint(0, free_y)
    else:
        left, top = free_x // 2, free_y // 2
    return CropPlan((rw, rh), left, top, (bw, bh))


def crop_positions(plan: CropPlan, scale: int = VAE_SCALE) -> torch.Tensor:
    """Latent-resolution position map ``[(h/8)·(w/8), 2]`` of the crop window in the full image."""
    (rw, rh), (cw, ch) = plan.resized, plan.size
    pix = crop_pos_map(rh, rw, plan.top, plan.left, ch, cw)  # [ch·cw, 2] at pixel resolution
    grid = pix.reshape(ch, cw, 2).permute(2, 0, 1)[None]
    lat = F.avg_pool2d(grid, scale)  # exact area average of a linear map
    return lat[0].permute(1, 2, 0).reshape(-1, 2).contiguous()
