"""A 2-process DDP run (gloo, CPU, under torch.distributed.run) matches one process at twice the batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from hdm_core.checkpoint import read_state_dict
from hdm_core.train import Trainer, read_adapter

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_process_ddp_matches_single_process_gradients(si, tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        from ddp_case import ADAPTER, make_data, train_config
    finally:
        sys.path.remove(str(HERE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP-RESULT completed 3" in proc.stdout

    single = Trainer(si.tiny_xut(0), make_data(), ADAPTER, train_config(tmp_path / "single", batch_size=2))
    with single.session():
        single.backward_micro_batches()
    want = {n: p.grad for n, p in single.adapter.trainable_parameters()}
    for rank in (0, 1):
        got = read_state_dict(tmp_path / f"grads_rank{rank}.safetensors")
        assert set(got) == set(want)
        for name, grad in want.items():
            # batch-1 vs batch-2 kernels sum in another order: float32 noise only
            assert float((got[name] - grad).abs().max()) <= 1e-5 * max(1.0, float(grad.abs().max())), name
    assert sum(float(g.abs().sum()) for g in want.values()) > 0

    # three optimiser steps: the DDP adapter equals the single-process one
    ddp = read_adapter(tmp_path / "fit" / "ddp.safetensors").tensors
    result = Trainer(si.tiny_xut(0), make_data(), ADAPTER, train_config(tmp_path / "s2", batch_size=2)).run()
    mine = read_adapter(result.adapter_path).tensors
    assert result.status == "completed" and ddp.keys() == mine.keys()
    for k in mine:
        assert float((ddp[k] - mine[k]).abs().max()) <= 1e-4 * max(1.0, float(mine[k].abs().max())), k
