"""fp8 weight storage: an XUT built or loaded in a float8 dtype keeps its conditioning path float32.

ComfyUI's ``weight_dtype`` (fp8_e4m3fn, fp8_e5m2 …) builds the diffusion model in a float8 dtype and
casts weights per layer at run time. ``island_dtype`` used ``torch.promote_types(dtype, float32)``,
which PyTorch refuses for float8 ("Promotion for Float8 Types is not supported"), so the model could
not even be built (found by ``benchmarks/comfy_gpu.py --smoke`` with a loader offering ``weight_dtype``).
"""

from __future__ import annotations

import pytest
import torch

import hdm_core
from hdm_core.testing import TINY_XUT, tiny_xut
from hdm_core.xut import FLOAT32_PREFIXES, island_dtype

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float32),
     (torch.float64, torch.float64), (torch.float8_e4m3fn, torch.float32), (torch.float8_e5m2, torch.float32)],
)  # fmt: skip
def test_island_dtype_is_at_least_float32_for_every_storage_dtype(dtype, expected):
    assert island_dtype(dtype) == expected


@pytest.mark.parametrize("dtype", FP8)
def test_xut_builds_and_loads_in_fp8_with_a_float32_conditioning_path(dtype):
    built = hdm_core.XUT(TINY_XUT, dtype=dtype, device="meta")  # as ComfyUI builds it: no init kernels (none exist for fp8)
    loaded = hdm_core.load_xut(tiny_xut(0).state_dict(), dtype=dtype)
    for model in (built, loaded):
        dtypes = {name: p.dtype for name, p in model.named_parameters()}
        cond = {n: d for n, d in dtypes.items() if n.startswith(FLOAT32_PREFIXES)}
        assert cond and set(cond.values()) == {torch.float32}
        assert dtype in set(dtypes.values())  # the rest is stored in fp8
