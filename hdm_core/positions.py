"""Position maps: the 2-D coordinates XUT's axial RoPE rotates by.

Every map holds ``(y, x)`` per token in row-major token order. HDM places an image in the
box ``[-1, 1]²`` shrunk on its short side by the aspect ratio, so a wide image spans
``x ∈ ±1, y ∈ ±H/W``. The camera controls of the reference pipeline shift and zoom that
map; training crops cut it to the crop window. Coordinates are built in float32 like the
reference (its ``±2/3`` bounds carry float32 rounding) and cast by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_bounds(height: int, width: int) -> tuple[float, float, float, float]:
    """``(y_min, y_max, x_min, x_max)`` of the aspect-aware box for a ``height × width`` grid.

    The short side spans ``±1/aspect`` (landscape) or ``±aspect`` (portrait), rounded to
    float32 as the reference does.
    """
    aspect = width / height
    if aspect > 1:
        r = torch.tensor(1 / aspect, dtype=torch.float32).item()
        return -r, r, -1.0, 1.0
    if aspect < 1:
        r = torch.tensor(aspect, dtype=torch.float32).item()
        return -1.0, 1.0, -r, r
    return -1.0, 1.0, -1.0, 1.0


def cell_centres(
    lo: float, hi: float, n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Centres of ``n`` equal cells on ``[lo, hi]`` (midpoints of linspace edges)."""
    edges = torch.linspace(lo, hi, n + 1, dtype=dtype, device=device)
    return (edges[:-1] + edges[1:]) / 2


def axial_grid(
    height: int,
    width: int,
    bounds: tuple[float, float, float, float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[height·width, 2]`` cell centres of a grid over ``bounds`` (default: the aspect box)."""
    y0, y1, x0, x1 = bounds if bounds is not None else grid_bounds(height, width)
    ys = cell_centres(y0, y1, height, device, dtype)
    xs = cell_centres(x0, x1, width, device, dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy, xx], dim=-1).reshape(height * width, 2)


def camera_pos_map(
    height: int,
    width: int,
    x_shift: float = 0.0,
    y_shift: float = 0.0,
    zoom: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The reference pipeline's camera map at **latent** resolution: ``[height·width, 2]``.

    Aspect-aware grid, ``y += y_shift``, ``x += x_shift``, then everything ``÷ zoom``
    (zoom > 1 narrows the visible window, i.e. zooms in). Pass the result as ``pos_map``;
    the model downsamples it to patch resolution (antialiased, see :func:`downsample_pos_map`).
    Note that even the neutral camera (0, 0, 1) differs from passing no map at the border
    rows and columns; the reference front-ends always passed one.
    """
    if zoom <= 0:
        raise ValueError(f"zoom must be > 0, got {zoom}")
    pos = axial_grid(height, width, device=device)
    pos = pos + torch.tensor([y_shift, x_shift], dtype=pos.dtype, device=pos.device)
    return pos / zoom


def downsample_pos_map(pos_map: torch.Tensor, height: int, width: int, factor: int) -> torch.Tensor:
    """``[B, H·W, 2]`` latent-resolution map → ``[B, (H/f)·(W/f), 2]`` patch-resolution map.

    PyTorch's bilinear resize with ``antialias=True`` (a triangle filter of half-width
    ``factor`` with edge renormalisation): linear maps keep exact cell centres in the
    interior while the first and last rows/columns are pulled inward. This is what the
    released model saw in training, so it is reproduced rather than "fixed".
    """
    b = pos_map.shape[0]
    grid = pos_map.reshape(b, height, width, 2).permute(0, 3, 1, 2)
    dtype = grid.dtype if grid.dtype in (torch.float32, torch.float64) else torch.float32
    small = F.interpolate(
        grid.to(dtype),
        size=(height // factor, width // factor),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return small.permute(0, 2, 3, 1).reshape(b, -1, 2)


def extend_pos_map(pos_map: torch.Tensor, height: int, width: int, new_height: int, new_width: int) -> torch.Tensor:
    """``[B, H·W, 2]`` map → ``[B, H'·W', 2]`` with rows/columns added at the bottom/right.

    Used when a latent is padded to the patch grid (:func:`hdm_core.xut.pad_to_patch_size`):
    the real cells keep their positions bit for bit, and each added row (column) continues
    the last step of the map, ``pos[H-1] + k·(pos[H-1] − pos[H-2])`` — for the aspect-aware
    and camera maps (affine in the cell index) these are exactly the positions the cells
    just outside the image would have. A map one cell high (wide) is repeated instead.
    """
    if new_height < height or new_width < width:
        raise ValueError(f"cannot extend a {height}x{width} map to {new_height}x{new_width}")
    b = pos_map.shape[0]
    grid = pos_map.reshape(b, height, width, 2)
    for dim, extra in ((1, new_height - height), (2, new_width - width)):
        if extra == 0:
            continue
        last = grid.narrow(dim, grid.shape[dim] - 1, 1)
        step = last - grid.narrow(dim, grid.shape[dim] - 2, 1) if grid.shape[dim] > 1 else torch.zeros_like(last)
        k = torch.arange(1, extra + 1, dtype=grid.dtype, device=grid.device)
        k = k.view(*([1] * dim), extra, *([1] * (grid.ndim - dim - 1)))
        grid = torch.cat([grid, last + k * step], dim=dim)
    return grid.reshape(b, new_height * new_width, 2)


def crop_pos_map(
    full_height: int,
    full_width: int,
    top: int,
    left: int,
    crop_height: int,
    crop_width: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Positions of a crop window cut from the full image's aspect-aware grid: ``[h·w, 2]``.

    Training crops keep the full image's coordinates, so the crop's location is encoded in
    its positions (HDM's shifted square crop). Sizes are in any unit (pixels or latents)
    as long as all six agree.
    """
    if not (0 <= top and 0 <= left and top + crop_height <= full_height and left + crop_width <= full_width):
        raise ValueError(
            f"crop window {crop_height}x{crop_width} at ({top}, {left}) does not fit in {full_height}x{full_width}"
        )
    full = axial_grid(full_height, full_width, device=device).reshape(full_height, full_width, 2)
    return full[top : top + crop_height, left : left + crop_width].reshape(-1, 2)
