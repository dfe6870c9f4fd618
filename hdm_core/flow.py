"""Rectified-flow sampling for HDM, as small pure functions (k-diffusion style).

HDM is trained on ``x_t = t·noise + (1 − t)·x0`` with the model predicting the velocity
``v = noise − x0``; sampling integrates ``dx/dt = v`` from ``t = 1`` (pure noise) to
``t = 0``. A sampler takes ``model(x, t) → v`` (``t`` a ``[B]`` tensor), the starting noise
and a decreasing schedule ``ts`` ending at 0. Guidance (CFG, TREAD gamma) lives in the
model callable, see :func:`cfg_model`, so every sampler supports it.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepCallback(Protocol):
    def __call__(self, step: int, t: float, x: torch.Tensor, x0: torch.Tensor) -> None: ...


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift ``shift·t / (1 + (shift − 1)·t)`` (ComfyUI's ``time_snr_shift``); 1 = none."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flow_timesteps(steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """``steps + 1`` times from 1 to 0 (float64): the reference's uniform Euler grid.

    The reference starts at ``t = 1`` and subtracts ``dt = 1/steps`` after each step; this
    reproduces that sequence (so the model sees exactly the reference's ``t`` values) and
    pins the last entry to 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dt = 1.0 / steps
    ts, t = [], 1.0
    for _ in range(steps):
        ts.append(t)
        t -= dt
    ts.append(0.0)
    return shift_timesteps(torch.tensor(ts, dtype=torch.float64, device=device), shift)


def seeded_noise(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise from a CPU generator, so a seed gives the same latents on any device.

    Matches ComfyUI's ``comfy.sample.prepare_noise`` for a whole batch (float32, CPU
    generator seeded with ``seed``), which makes CLI and ComfyUI runs comparable.
    """
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device="cpu").to(device=device, dtype=dtype)


def to_x0(x: torch.Tensor, t: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """The clean-image estimate ``x0 = x_t − t·v``."""
    return x - t * v


def _t_batch(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


@torch.no_grad()
def sample_euler(model: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """First-order Euler, ``x ← x + (t_next − t)·v``: the reference sampler."""
    ts_list = [float(t) for t in ts]
    for i, (t, t_next) in enumerate(zip(ts_list[:-1], ts_list[1:])):
        v = model(x, _t_batch(x, t))
        if callback is not None:
            callback(i, t, x, to_x0(x, t, v))
        x = x + (t_next - t) * v
    return x


@torch.no_grad()
def sample_heun(model: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Second-order Heun (trapezoidal); the final step to ``t = 0`` is a plain Euler step."""
    ts_list = [float(t) for t in ts]
    for i, (t, t_next) in enumerate(zip(ts_list[:-1], ts_list[1:])):
        v = model(x, _t_batch(x, t))
        if callback is not None:
            callback(i, t, x, to_x0(x, t, v))
        x_euler = x + (t_next - t) * v
        if t_next == 0:
            x = x_euler
        else:
            v_next = model(x_euler, _t_batch(x, t_next))
            x = x + (t_next - t) * (v + v_next) / 2
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) in the flow parameterisation (``α = 1 − t``, ``σ = t``).

    Multistep on the data prediction with ``λ = log(α/σ)``. The first step from ``t = 1``
    (``α = 0``) and the last step to ``t = 0`` are first order; the first equals Euler.
    """
    ts_list = [float(t) for t in ts]

    def lam(t: float) -> float:
        return math.log((1 - t) / t)

    x0_prev, h_prev = None, None
    for i, (t, t_next) in enumerate(zip(ts_list[:-1], ts_list[1:])):
        v = model(x, _t_batch(x, t))
        x0 = to_x0(x, t, v)
        if callback is not None:
            callback(i, t, x, x0)
        if t_next == 0:
            x = x0
            break
        if t >= 1.0:  # α = 0: the exact first-order step is x_next = t_next·x + (1 − t_next)·x0
            x = t_next * x + (1 - t_next) * x0
            h = None
        else:
            h = lam(t_next) - lam(t)
            d = x0
            if x0_prev is not None and h_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (t_next / t) * x - (1 - t_next) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}") from None


def pad_contexts(contexts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[B, T_i, D]`` contexts of different lengths: zero-padded ``[ΣB, T, D]`` and the
    key mask ``[ΣB, T]`` (True = real token) that makes the padding invisible to the XUT."""
    longest = max(c.shape[1] for c in contexts)
    padded, masks = [], []
    for c in contexts:
        b, t, d = c.shape
        padded.append(torch.cat([c, c.new_zeros(b, longest - t, d)], dim=1))
        mask = torch.zeros(b, longest, dtype=torch.bool, device=c.device)
        mask[:, :t] = True
        masks.append(mask)
    return torch.cat(padded), torch.cat(masks)


def _same(a, b) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b)))
    return a is b or a == b


def _batchable(cond: dict, uncond: dict) -> bool:
    """Both passes can share one forward exactly: same arguments but the context, no routing."""
    if set(cond) != set(uncond) or "ctx" not in cond or "ctx_mask" in cond or "tread_mask" in cond:
        return False
    if any(kw.get(k) for kw in (cond, uncond) for k in ("tread_rate", "tread")):
        return False  # token routing differs per branch: separate passes
    return all(_same(cond[k], uncond[k]) for k in cond if k != "ctx")


def cfg_model(
    model: Callable[..., torch.Tensor],
    cond: dict,
    uncond: dict | None,
    cfg: float,
    *,
    batch: bool = False,
) -> VelocityFn:
    """Classifier-free guidance as a velocity function: ``v_u + cfg·(v_c − v_u)``.

    ``cond`` / ``uncond`` are keyword arguments for ``model(x, t, **kw)`` (``ctx``,
    ``pos_map``, ``addon_info``, ``tread_rate`` …), which is how the TREAD-gamma trick
    gives the two branches different routing rates. HDM's text tokens share self-attention
    with the image, so prompts of different lengths must not be padded into one batch as
    ComfyUI's cross-attention models do. By default the passes run separately, as in the
    reference; with ``batch=True`` they share one forward when that is exact: the shorter
    context is zero-padded and its padding masked out of every attention (``ctx_mask``),
    which only works when neither branch routes tokens (then they run separately anyway).
    With ``cfg == 1`` or no ``uncond`` only the conditional pass runs.
    """
    if uncond is None or cfg == 1.0:
        return lambda x, t: model(x, t, **cond)
    if batch and _batchable(cond, uncond):
        ctx, ctx_mask = pad_contexts([cond["ctx"], uncond["ctx"]])
        b = cond["ctx"].shape[0]
        # Per-sample tensors ([B, …], B > 1) are repeated for the second half; size-1 ones broadcast.
        shared = {
            k: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim and v.shape[0] == b > 1 else v
            for k, v in cond.items()
            if k != "ctx"
        }

        def batched(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), ctx=ctx, ctx_mask=ctx_mask, **shared).chunk(2)
            return v_uncond + cfg * (v_cond - v_uncond)

        return batched

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond = model(x, t, **cond)
        v_uncond = model(x, t, **uncond)
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity
