"""Any image size (issue #14 item 3): latents off the 2×2 patch grid are padded and cropped back.

On-grid sizes must not move at all (checked against outputs recorded with the code before the
change, ``tests/fixtures/on_grid``); off-grid sizes must run with positions and aspect taken
from the real size, and equal the explicit "pad, run on the grid, crop" composition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hdm_core import load_xut
from hdm_core.pipeline import GenerationParams, check_size, guidance_kwargs, initial_noise, latent_size, velocity_fn
from hdm_core.positions import axial_grid, camera_pos_map, downsample_pos_map, extend_pos_map
from hdm_core.testing import tiny_xut
from hdm_core.tread import seeded_keep_mask
from hdm_core.xut import pad_to_patch_size, patch_grid

ON_GRID = Path(__file__).resolve().parent / "fixtures" / "on_grid" / "on_grid_outputs.safetensors"


@pytest.fixture(scope="module")
def recorded():
    with safe_open(str(ON_GRID), "pt") as f:
        env = json.loads(f.metadata()["env"])
    return load_file(str(ON_GRID)), env


@pytest.fixture(scope="module")
def models(fixtures_dir):
    w = fixtures_dir / "tiny_weights.safetensors"
    return {name: load_xut(w, dtype=dt) for name, dt in (("f32", torch.float32), ("f64", torch.float64),
                                                          ("f16", torch.float16), ("bf16", torch.bfloat16))}  # fmt: skip


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was recorded single-threaded
    yield
    torch.set_num_threads(n)


DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
#: Where the fixture's machine differs (another BLAS kernel may round differently): still far
#: tighter than any real change. Half precision: a few units of its last place on O(1) outputs.
OTHER_ENV_ATOL = {"f32": 1e-5, "f64": 1e-12, "f16": 2e-2, "bf16": 1e-1}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("case", ["plain", "camera", "tread"])
def test_on_grid_sizes_give_the_recorded_outputs_bit_for_bit(models, recorded, one_thread, case, dtype):
    """Recorded with the code before "any size" and before issue #13's changes: every dtype, bit for bit."""
    r, env = recorded
    dt = DTYPES[dtype]
    model = models[dtype]
    x, ctx, t = r["x"].to(dt), r["ctx"].to(dt), r["t"]
    kw = {
        "plain": {},
        "camera": {"pos_map": r["pos_map"], "ctx_mask": r["ctx_mask"]},
        "tread": {"pos_map": r["pos_map"], "tread_mask": r["tread_mask"]},
    }[case]
    with torch.no_grad():
        out = model(x, t, ctx, **kw)
    ref = r[f"{case}.{dtype}"]
    assert out.shape == ref.shape == x.shape
    same_env = env["torch"] == torch.__version__ and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if same_env:
        assert torch.equal(out, ref), f"max diff {(out - ref).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=OTHER_ENV_ATOL[dtype])


def test_pad_to_patch_size_is_comfyuis_rule():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    assert pad_to_patch_size(x[..., :4, :6], 2).data_ptr() == x.data_ptr()  # on grid: the input itself, no copy
    y = pad_to_patch_size(x, 2)
    assert y.shape == (2, 3, 6, 8)
    assert torch.equal(y[..., :5, :7], x)
    assert torch.equal(y[..., 5, :7], x[..., 0, :])  # circular: the added row repeats the first one
    assert torch.equal(y[..., :5, 7], x[..., :, 0])
    assert torch.equal(y[..., 5, 7], x[..., 0, 0])
    assert patch_grid(65, 65, 2) == (33, 33) and patch_grid(93, 125, 2) == (47, 63) and patch_grid(64, 96, 2) == (32, 48)


def test_extended_map_keeps_real_cells_and_continues_the_grid():
    h, w = 5, 7
    real = camera_pos_map(h, w, 0.25, -0.125, 1.5)[None]
    ext = extend_pos_map(real, h, w, 6, 8)
    grid = ext.reshape(1, 6, 8, 2)
    assert torch.equal(grid[:, :h, :w].reshape(1, -1, 2), real)  # real cells bit for bit
    # The camera map is affine in the cell index: the added cells are where the grid continues.
    dy = (grid[0, 1, 0, 0] - grid[0, 0, 0, 0]).item()
    dx = (grid[0, 0, 1, 1] - grid[0, 0, 0, 1]).item()
    ys = grid[0, 0, 0, 0].item() + dy * torch.arange(6, dtype=torch.float64)
    xs = grid[0, 0, 0, 1].item() + dx * torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(grid[0, :, :, 0].double(), ys[:, None].expand(6, 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(grid[0, :, :, 1].double(), xs[None, :].expand(6, 8), rtol=0, atol=1e-6)
    # aspect box from the real size: x spans ±1/zoom around the shift, y the same box × H/W
    assert math.isclose(dx, 2 / w / 1.5, rel_tol=1e-5) and math.isclose(dy, 2 * (h / w) / h / 1.5, rel_tol=1e-5)
    with pytest.raises(ValueError, match="cannot extend"):
        extend_pos_map(real, h, w, 4, 8)


def test_patch_positions_off_grid(models):
    model = models["f32"]
    h, w = 5, 7
    pos = model.patch_positions(None, 1, h, w, "cpu")
    assert pos.shape == (1, 3 * 4, 2)
    # Without a map: the centres of the 2x2 patches of the real image's cell grid, continued past the edge.
    cells = axial_grid(h, w).reshape(h, w, 2).double()
    cy, cx = cells[:, 0, 0], cells[0, :, 1]
    cy = torch.cat([cy, 2 * cy[-1:] - cy[-2:-1]])
    cx = torch.cat([cx, 2 * cx[-1:] - cx[-2:-1]])
    ref_y = (cy[0::2] + cy[1::2]) / 2
    ref_x = (cx[0::2] + cx[1::2]) / 2
    torch.testing.assert_close(pos[0].reshape(3, 4, 2)[..., 0].double(), ref_y[:, None].expand(3, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(pos[0].reshape(3, 4, 2)[..., 1].double(), ref_x[None, :].expand(3, 4), rtol=0, atol=1e-6)
    # A latent-resolution map: extended, then downsampled like an on-grid one.
    cam = camera_pos_map(h, w, 0.1, 0.2, 1.25)[None]
    got = model.patch_positions(cam, 1, h, w, "cpu")
    assert torch.equal(got, downsample_pos_map(extend_pos_map(cam, h, w, 6, 8), 6, 8, 2))
    # A patch-resolution map is used as is; a wrong count says what it expected.
    assert torch.equal(model.patch_positions(got, 1, h, w, "cpu"), got)
    with pytest.raises(ValueError, match=r"expected 35 \(latent 5x7\) or 12 \(patches 3x4\)"):
        model.patch_positions(torch.zeros(1, 30, 2), 1, h, w, "cpu")


@pytest.mark.parametrize("hw", [(5, 7), (9, 12), (12, 9)])
def test_off_grid_forward_is_pad_run_crop(models, hw):
    """The model on an off-grid latent = the model on the padded latent with the real size's
    positions and aspect, cropped back — with and without a camera map and TREAD routing."""
    h, w = hw
    model = models["f64"]
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64)
    ctx = torch.randn(2, 3, 48, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.9, 0.3])
    hp, wp = patch_grid(h, w, 2)
    cam = camera_pos_map(h, w, 0.25, -0.125, 1.5)[None]
    mask = seeded_keep_mask(hp * wp, 0.5, [11, 12])
    for kw in ({}, {"pos_map": cam}, {"pos_map": cam, "tread_mask": mask}):
        with torch.no_grad():
            out = model(x, t, ctx, **kw)
            pos = model.patch_positions(kw.get("pos_map"), 2, h, w, "cpu", torch.float64)
            ref = model(
                pad_to_patch_size(x, 2), t, ctx, pos_map=pos, addon_info=math.log(w / h), tread_mask=kw.get("tread_mask")
            )[..., :h, :w]
        assert out.shape == x.shape and out.is_contiguous()
        assert torch.equal(out, ref), kw.keys()
    # the default aspect addon is the real size's: the padded size's would give another output
    with torch.no_grad():
        assert not torch.allclose(model(x, t, ctx, addon_info=math.log(wp / hp)), model(x, t, ctx))


def test_tread_on_padded_grids_routes_every_patch_and_checks_the_count(models):
    model = models["f32"]
    x = torch.randn(1, 4, 9, 13, generator=torch.Generator().manual_seed(0))
    n = 5 * 7  # ceil(9/2) * ceil(13/2): each border patch holds a real cell, so all are candidates
    with torch.no_grad():
        a = model(x, 0.5, tread_rate=0.5, generator=torch.Generator().manual_seed(3))
        b = model(x, 0.5, tread_rate=0.5, generator=torch.Generator().manual_seed(3))
        full = model(x, 0.5)
        assert torch.equal(a, b) and not torch.allclose(a, full)
        with pytest.raises(ValueError, match=r"tread_mask must be \[1, 35\]"):
            model(x, 0.5, tread_mask=torch.ones(1, 4 * 6, dtype=torch.bool))
        ones = model(x, 0.5, tread_mask=torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(ones, full, rtol=0, atol=1e-6)  # keeping every token = no routing


def test_too_small_latent_names_the_minimum(models):
    with pytest.raises(ValueError, match=r"smaller than one 2x2 patch.*at least 16x16 pixels"):
        models["f32"](torch.zeros(1, 4, 1, 8), 0.5)


def test_headless_sizes():
    check_size(520, 520)
    check_size(1000, 744)
    check_size(16, 24)
    assert latent_size(1000, 744) == (93, 125) and latent_size(520, 520) == (65, 65)
    assert initial_noise(1, 1000, 744, 0).shape == (1, 4, 93, 125)
    with pytest.raises(ValueError, match=r"width 1001 is not a multiple of 8.*try 1000 or 1008"):
        check_size(1001, 744)
    with pytest.raises(ValueError, match=r"height 8 is too small.*at least 16 px"):
        check_size(64, 8)
    with pytest.raises(ValueError, match="width 0 is too small"):
        GenerationParams(width=0).validate()


def test_headless_sampling_off_grid_routes_with_the_padded_token_count():
    """velocity_fn builds TREAD masks for the padded grid, so the pipeline samples any size."""
    model = tiny_xut().eval()
    params = GenerationParams(width=40, height=24, steps=2, seed=4, tread_gamma=0.25, tread_gamma_uncond=0.5)
    ctx = torch.randn(1, 3, model.config.ctx_dim)
    cond, uncond = guidance_kwargs(ctx, ctx[:, :0], params)
    v = velocity_fn(model, cond, uncond, params.cfg)
    x = initial_noise(1, 40, 24, 4)
    assert x.shape == (1, 4, 3, 5)
    with torch.no_grad():
        out = v(x, torch.tensor([0.5]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the routed uncond pass differs from an unrouted one (so routing really ran on 2x3 patches)
    cond0, uncond0 = guidance_kwargs(ctx, ctx[:, :0], GenerationParams(width=40, height=24, tread_gamma=0.25, tread_gamma_uncond=0.0, seed=4))
    with torch.no_grad():
        assert not torch.allclose(out, velocity_fn(model, cond0, uncond0, params.cfg)(x, torch.tensor([0.5])))
