"""Optimiser, learning-rate rules and schedule for adapter training.

* AdamW over the adapter tensors, optionally with HDM's per-parameter "muP" rule: one
  parameter group per tensor with ``lr = base_lr / fan_in``, where fan_in is ``numel`` for
  tensors with fewer than 2 dims (so a length-``n`` bias gets ``base/n``), ``shape[1]`` for
  2-D weights and the product of dims 1.. for >2-D weights. HDM's LyCORIS fine-tune used
  base lr 0.1 with this rule (a ``[4, 4]`` LoKr ``w1`` gets 0.025).
* Schedules are functions of the optimiser step: linear warm-up from 0, then cosine (down
  to ``min_factor``·lr), linear decay, or constant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch

SCHEDULERS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-4
    mup: bool = False
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown lr scheduler '{self.scheduler}'; choose one of: {', '.join(SCHEDULERS)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 (or unset to disable clipping), got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    """HDM's fan-in for the muP rule (see the module docstring)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return max(1, math.prod(shape))
    return max(1, math.prod(shape[1:]))


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float, mup: bool = False
) -> list[dict[str, Any]]:
    """AdamW parameter groups: one group, or one per tensor with the muP rule."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if not named:
        raise ValueError("there are no trainable parameters: the adapter wrapped no module (check the target preset)")
    if not mup:
        return [{"params": [p for _, p in named], "base_lr": lr, "weight_decay": weight_decay, "names": [n for n, _ in named]}]
    return [{"params": [p], "base_lr": lr / fan_in(p.shape), "weight_decay": weight_decay, "names": [n]} for n, p in named]


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimizerConfig) -> torch.optim.AdamW:
    groups = param_groups(named_params, cfg.lr, cfg.weight_decay, cfg.mup)
    for group in groups:
        group["lr"] = group["base_lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """Multiplier of every group's base lr at optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.scheduler == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.scheduler == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * shape


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """Set every group's lr for optimiser step ``step``; returns the (unscaled-by-muP) lr.

    The schedule is a pure function of the step, so resuming needs no scheduler state.
    """
    factor = lr_factor(step, total_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return cfg.lr * factor
