"""Run under ``torch.distributed.run --nproc_per_node 2``: one micro-batch's adapter gradients, then 3 steps.

Writes ``grads_rank<r>.safetensors`` (after DDP's all-reduce) and, from rank 0, the adapter
trained for 3 steps, for ``test_ddp.py`` to compare with a single process at twice the batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import standins
from hdm_core.checkpoint import save_safetensors
from hdm_core.train import Trainer

from ddp_case import ADAPTER, make_data, train_config


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    trainer = Trainer(standins.tiny_xut(0), make_data(), ADAPTER, train_config(out / "grads", batch_size=1))
    with trainer.session():
        trainer.backward_micro_batches()
    grads = {n: p.grad.detach().clone() for n, p in trainer.adapter.trainable_parameters()}
    save_safetensors(grads, out / f"grads_rank{rank}.safetensors")
    dist.barrier()
    result = Trainer(standins.tiny_xut(0), make_data(), ADAPTER, train_config(out / "fit", batch_size=1)).run()
    if rank == 0:
        print("DDP-RESULT", result.status, result.step, result.adapter_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
