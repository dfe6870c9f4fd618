"""A loss curve as a picture, drawn with Pillow alone (matplotlib is no dependency of ComfyUI).

Per-step flow-matching losses are noisy (every sample draws its own timestep), so the plot
shows the raw losses in light grey and an exponential moving average on top, with the loss
axis labelled at its ends and the step axis from 1 to the last step.
"""

from __future__ import annotations

import math
from typing import Sequence

#: Colours (RGB) of the plot.
BACKGROUND = (255, 255, 255)
AXES = (90, 90, 90)
GRID = (230, 230, 230)
RAW = (190, 190, 200)
SMOOTH = (30, 90, 200)
TEXT = (40, 40, 40)


def smoothed(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (``weight`` defaults to one over ~1/10 of the run)."""
    if not values:
        return []
    if weight is None:
        weight = min(0.98, max(0.0, 1.0 - 10.0 / max(10, len(values))))
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1.0 - weight) * v
        out.append(avg / (1.0 - weight**i) if weight > 0 else v)
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def loss_curve_image(
    losses: Sequence[float],
    *,
    width: int = 640,
    height: int = 360,
    title: str = "training loss",
):
    """A PIL RGB image of ``losses`` (one per optimiser step); non-finite values are skipped.

    With no finite loss the image says so instead of drawing a curve.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 64, width - 16, 28, height - 36
    draw.text((left, 8), title, fill=TEXT, font=font)
    points = [(i, float(v)) for i, v in enumerate(losses, start=1) if math.isfinite(float(v))]
    draw.rectangle((left, top, right, bottom), outline=AXES)
    if not points:
        draw.text((left + 12, (top + bottom) // 2), "no finite loss was recorded", fill=TEXT, font=font)
        return img
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    smooth = smoothed(values)
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    first, last = steps[0], steps[-1]

    def xy(step: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * ((step - first) / (last - first) if last > first else 0.5)
        y = bottom - (bottom - top) * (value - lo) / (hi - lo)
        return x, y

    for k in range(1, 4):  # horizontal grid at quarters
        y = top + (bottom - top) * k / 4
        draw.line((left + 1, y, right - 1, y), fill=GRID)
    for series, colour, line_width in ((values, RAW, 1), (smooth, SMOOTH, 2)):
        coords = [xy(s, v) for s, v in zip(steps, series)]
        if len(coords) == 1:
            x, y = coords[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        else:
            draw.line(coords, fill=colour, width=line_width)
    draw.text((4, top - 6), _fmt(hi), fill=TEXT, font=font)
    draw.text((4, bottom - 6), _fmt(lo), fill=TEXT, font=font)
    draw.text((left, bottom + 6), f"step {first}", fill=TEXT, font=font)
    end_label = f"step {last}"
    draw.text((right - 6 * len(end_label), bottom + 6), end_label, fill=TEXT, font=font)
    summary = f"last {_fmt(smooth[-1])} (smoothed), min {_fmt(lo)}"
    draw.text((right - 6 * len(summary), 8), summary, fill=SMOOTH, font=font)
    return img
