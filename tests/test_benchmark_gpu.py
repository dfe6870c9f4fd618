"""benchmarks/gpu.py's FLOP / peak / MFU columns, run as ``--smoke`` on the CPU (issue #13).

The GPU run is the measurement; this checks on any machine that the script runs, prints the
columns, and that its FLOP count (``FlopCounterMode``) equals an independent count made here
from module hooks on every Linear/Conv2d and on the attention calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdm_core import XUT, XUTConfig
from hdm_core.attention import sdpa_attention
from hdm_core.tread import keep_count
from hdm_core.xut import patch_grid

REPO = Path(__file__).resolve().parents[1]


def hooked_flops(config: XUTConfig, calls: list[dict]) -> int:
    """2·(multiply-adds) of every Linear, Conv2d and attention product over ``calls`` (shapes only)."""
    model = XUT(config).eval()
    total = 0

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2 * m.in_features * m.out_features * (inp[0].numel() // m.in_features)

    def conv_hook(m, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def attention(q, k, v, **kw):
        nonlocal total
        b, h, n, d = q.shape
        total += 2 * b * h * n * k.shape[2] * d + 2 * b * h * n * k.shape[2] * v.shape[3]  # q·kᵀ, then ·v
        return sdpa_attention(q, k, v, **kw)

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv_hook)
    model.set_attention(attention)
    with torch.no_grad():
        for c in calls:
            b = c["batch"]  # one timestep and aspect addon per sample, as the benchmark passes them
            model(torch.zeros(b, 4, c["size"], c["size"]), torch.full((b,), 0.5), torch.zeros(b, c["ctx"], config.ctx_dim),
                  addon_info=torch.zeros(b, 1), tread_mask=c.get("tread_mask"))  # fmt: skip
    return total


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "smoke.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, json.loads(out.read_text())


def test_smoke_run_prints_time_flops_peak_and_mfu(smoke):
    stdout, results = smoke
    assert "errors" not in results, results.get("errors")
    header = "| impl | dtype | batch | median (ms) | min (ms) | it/s | GFLOP/step | TFLOP/s | MFU | vs reference eager, same dtype |"
    assert header in stdout
    assert "measured matmul peak, fp32:" in stdout
    rows = results["speed"]
    assert {r["batch"] for r in rows} == {1, 2} and len(rows) == 6
    peak = results["matmul_peak"]["fp32"]["flops_per_s"]
    assert peak > 0
    for r in rows:
        assert r["flops"] > 0 and r["median_s"] > 0
        assert r["mfu"] == pytest.approx(r["flops"] / r["median_s"] / peak)
        line = next(ln for ln in stdout.splitlines() if ln.startswith(f"| {r['impl']} | fp32 | {r['batch']} |"))
        assert f"| {r['flops'] / 1e9:.3f} |" in line and f"| {r['mfu']:.1%} |" in line


def test_flop_count_equals_an_independent_count(smoke):
    _, results = smoke
    setup = results["speed_setup"]
    config = XUTConfig.from_dict(setup["config"])
    size, ctx, neg = setup["size"], setup["ctx"], setup["neg_tokens"]
    rows_, cols_ = patch_grid(size, size, config.patch_size)
    num_img = rows_ * cols_
    checked = set()
    for r in results["speed"]:
        b = r["batch"]
        if r["impl"] == "ours, eager, 2 calls":
            calls = [dict(batch=b, size=size, ctx=ctx), dict(batch=b, size=size, ctx=neg)]
        elif r["impl"] == "ours, eager, HDM CFG pair (negative TREAD 0.5)":
            keep = keep_count(num_img, setup["neg_tread"])
            mask = torch.zeros(b, num_img, dtype=torch.bool)
            mask[:, :keep] = True  # which tokens does not change the count
            calls = [dict(batch=b, size=size, ctx=ctx), dict(batch=b, size=size, ctx=neg, tread_mask=mask)]
        elif r["impl"] == "ours, eager, 1 batched call":
            calls = [dict(batch=2 * b, size=size, ctx=ctx)]
        else:
            continue
        assert r["flops"] == hooked_flops(config, calls), r["impl"]
        checked.add(r["impl"])
    assert len(checked) == 3, checked  # every counted kind of row was there (a rename would skip it)
    routed = {r["batch"]: r["flops"] for r in results["speed"] if "TREAD" in r["impl"]}
    full = {r["batch"]: r["flops"] for r in results["speed"] if r["impl"] == "ours, eager, 2 calls"}
    assert full and all(routed[b] < full[b] for b in full)  # TREAD on the negative removes backbone work
