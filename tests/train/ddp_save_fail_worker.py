"""Run under ``torch.distributed.run --nproc_per_node 2``: rank 0's second save fails (disk full).

Every rank must stop with a TrainingError instead of waiting for rank 0 forever; each prints
``STOPPED <rank>: <message>`` for ``test_faults.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
from pathlib import Path

import safetensors.torch as st
import torch
import torch.distributed as dist

import standins
from hdm_core.train import Trainer, TrainingError

from ddp_case import ADAPTER, make_data, train_config


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    real = st.save_file

    def disk_full(tensors, filename, metadata=None):
        if "ddp-step000002" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    st.save_file = disk_full  # this worker process only
    config = dataclasses.replace(train_config(out, batch_size=1), save_every=1)
    try:
        Trainer(standins.tiny_xut(0), make_data(), ADAPTER, config).run()
        print(f"COMPLETED {rank}", flush=True)
    except TrainingError as exc:
        print(f"STOPPED {rank}: {exc}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
