"""``benchmarks/comfy_gpu.py --smoke``: the GPU benchmark of issue #12 runs end to end on a CPU.

The GPU run happens rarely (a lent machine, minutes of device time), so this keeps the script from
rotting in between: the same driver, child processes, ComfyUI start-up, prompts and comparisons, on
tiny random files at 64² with 3 steps. It checks the tables it writes: every case has its row,
nothing errored, CUDA-only rows say why they were skipped, ComfyUI's images equal headless
``hdm_core`` (and the trained MODEL equals its saved file through Load LoRA) within one 8-bit level,
on images with real contrast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: CPU, float32 on both sides: only summation order differs, so a value may sit across an 8-bit edge.
MAX_MEAN_LEVELS = 0.05
MAX_LEVELS = 1


@pytest.fixture(scope="module")
def smoke(comfyui_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("comfy_gpu_smoke")
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "comfy_gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(out),
    )  # fmt: skip
    logs = (out / "logs.txt").read_text() if (out / "logs.txt").is_file() else ""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    return results, (out / "tables.md").read_text(), logs


def rows(results, case):
    return {r["name"]: r for r in results["summary"]["rows"] if r["case"] == case}


def assert_same(diff, what):
    assert diff is not None, f"{what}: no image to compare"
    assert diff["std_a"] > 20, f"{what}: a low-contrast image (std {diff['std_a']:.1f}) would prove little"
    assert diff["mean"] <= MAX_MEAN_LEVELS and diff["max"] <= MAX_LEVELS, f"{what}: differs by {diff}"


def test_smoke_run_has_no_errors_and_every_case_row(smoke):
    results, md, logs = smoke
    assert results["summary"]["errors"] == [], results["summary"]["errors"]
    for header in ("### a.", "### b.", "### c.", "### d.", "### e."):
        assert header in md, f"table {header} missing"
    assert {r["case"] for r in results["summary"]["rows"]} == {"a", "b", "c", "d", "e"}
    assert "error" not in md.lower()


def test_comfyui_workflows_equal_headless_on_the_cpu(smoke):
    results, _, _ = smoke
    a = rows(results, "a")
    for name in ("cpu/ksampler", "cpu/hdm_sampler"):
        assert a[name]["status"] == "ok", a[name]
        assert_same(a[name]["diff"], name)
    info = results["info"]["cpu"]
    assert info["vram_state"] == "DISABLED" and info["dynamic_vram"] is False  # --cpu really reached ComfyUI


def test_cuda_only_rows_are_skipped_with_the_reason(smoke):
    results, md, _ = smoke
    a = rows(results, "a")
    for state in ("default", "lowvram", "novram", "no-dynamic-vram", "highvram"):
        assert a[state]["status"] == "skipped" and a[state]["reason"] == "CUDA-only"
    (c,) = rows(results, "c").values()
    assert c["status"] == "skipped" and "--smoke-compile" in c["reason"]


def test_weight_dtype_rows_follow_the_loader(smoke):
    """HDM Checkpoint Loader has ``weight_dtype`` (the child sees it), and every dtype row runs."""
    results, _, _ = smoke
    b = rows(results, "b")
    assert results["info"]["cpu"]["loader_has_weight_dtype"]
    for dt in ("default", "fp32", "fp16", "bf16", "fp8_e4m3fn"):
        assert b[dt]["status"] == "ok", b[dt]
    assert b["fp32"]["diff_fp32"]["mean"] == 0


def test_training_node_model_equals_its_saved_file_and_has_a_step_time(smoke):
    results, _, _ = smoke
    d = rows(results, "d")["train"]
    assert d["status"] == "ok", d
    assert_same(d["diff"], "trained MODEL vs Load LoRA")
    assert d["ratio"] is not None and d["ratio"] > 0  # both the node's and the headless trainer's s/step were measured
    cases = next(c for c in results["children"] if c["name"] == "cpu")["cases"]
    assert cases["train"]["node_it_s"] > 0


def test_speed_table_has_comfyui_and_headless_step_times(smoke):
    results, md, _ = smoke
    assert rows(results, "e")["speed"]["status"] == "ok"
    line = next(x for x in md.splitlines() if x.startswith("| ComfyUI, KSampler, eager |"))
    assert float(line.split("|")[2]) > 0
    assert "| reference implementation, eager, 2 calls | not given |" in md
