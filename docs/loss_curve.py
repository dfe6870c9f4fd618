"""Draw docs/loss_curve.png: the loss curve of a short headless training run.

    python docs/loss_curve.py [--steps 150]

Runs ``python -m trainer fit`` (in process) on the tiny HDM files of ``hdm_core.testing`` (a
small random XUT, VAE and Qwen3: the real code path at a size a CPU trains in a minute) over a
folder of six smooth-colour pictures with captions, then draws the per-step losses the trainer
keeps in its ``-state.safetensors`` with ``hdm_core.train.plot.loss_curve_image`` — the picture
HDM Train LyCORIS returns as its ``loss_curve`` output. Nothing here needs ComfyUI or a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, count: int = 6, size: int = 64) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    tags = ["smile", "fox ears", "school uniform", "cherry blossoms", "outdoors", "looking at viewer", "blue sky"]
    root.mkdir(parents=True)
    for i in range(count):
        small = rng.random((4, 4, 3))
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        img.save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text("1girl ||| " + ", ".join(rng.choice(tags, 3, replace=False)), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "loss_curve.png")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)  # a model this small runs ~10x slower when its few ops are split over threads
    from hdm_core.fileformat import atomic_write
    from hdm_core.testing import write_tiny_hdm
    from hdm_core.train.plot import loss_curve_image
    from hdm_core.train.state import read_training_state
    from trainer.cli import main as trainer_main

    with tempfile.TemporaryDirectory(prefix="hdm-loss-curve-") as tmp:
        tmp = Path(tmp)
        files = write_tiny_hdm(tmp / "weights")
        write_dataset(tmp / "data" / "2_chara")
        cfg = tmp / "config.toml"
        cfg.write_text(
            f'[model]\ncheckpoint = "{files["ckpt"].as_posix()}"\ntext_encoder = "{files["te"].as_posix()}"\ndevice = "cpu"\n'
            '[dataset]\npath = "data"\ncache_latents = true\ncache_text = true\n[dataset.buckets]\nresolution = 64\n'
            '[adapter]\nalgo = "lora"\ndim = 8\nalpha = 8\n'
            f'[training]\nsteps = {args.steps}\nbatch_size = 2\nseed = 1\n[training.optimizer]\nlr = 2e-3\nwarmup_steps = 10\nscheduler = "cosine"\n'
            '[output]\ndir = "out"\nname = "short_run"\nsave_every = 0\n'
            "[sample]\nevery = 0\n"
        )
        rc = trainer_main(["fit", str(cfg)])
        if rc != 0:
            return rc
        state = read_training_state(tmp / "out" / "short_run-state.safetensors")
    image = loss_curve_image(state.loss_history, title=f"LoRA rank 8, {len(state.loss_history)} steps (tiny HDM, CPU): loss per step")
    with atomic_write(args.out) as tmp:  # (makes the folder)
        image.save(tmp, format="PNG", optimize=True)
    print(f"{args.out} ({len(state.loss_history)} steps, first {state.loss_history[0]:.4f}, last {state.loss_history[-1]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
