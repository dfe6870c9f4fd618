"""``python -m trainer``: headless LyCORIS training for HDM.

Commands:

* ``fit CONFIG.toml`` — train (see ``trainer/example.toml``); under ``torchrun
  --nproc_per_node N`` it trains data-parallel with PyTorch DDP (NCCL on GPUs, gloo on CPU).
* ``convert IN.pt OUT.safetensors`` — convert an adapter saved by HDM's own trainer
  (``lycoris_model_*`` keys) for ComfyUI's LoRA loader.

Ctrl-C once stops after the current step and saves; twice aborts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from .config import ConfigError, FitConfig, load_config

log = logging.getLogger("trainer")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _setup_distributed(device_name: str) -> tuple[torch.device, int, int]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if device_name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu"), 0, 1
        return torch.device(device_name), 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", local) if use_cuda else torch.device("cpu"), dist.get_rank(), dist.get_world_size()


class _StopFlag:
    """First SIGINT: stop after the current step (and save); second: abort."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def install(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("stopping after this step and saving (press Ctrl-C again to abort)")

        try:
            self.previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no Ctrl-C handling
            self.previous = None

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def __call__(self) -> bool:
        return self.requested


def fit(cfg: FitConfig, *, steps: int | None = None, resume: str | None = None) -> int:
    from hdm_core import load_xut
    from hdm_core.checkpoint import CheckpointError
    from hdm_core.train import DiskCache, ImageFolderData, TrainCallbacks, Trainer, scan_image_folder
    from hdm_core.train.loop import input_dtypes

    from .encoders import build_encoders, check_model_files
    from .samples import make_sampler

    if steps is not None:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, steps=steps))
    if resume:
        cfg = dataclasses.replace(cfg, resume=dataclasses.replace(cfg.resume, state=resume, init_adapter=""))
    if not cfg.model.checkpoint:
        raise ConfigError("[model] checkpoint is required: the HDM checkpoint (.safetensors) to train on")
    if not cfg.dataset.path:
        raise ConfigError("[dataset] path is required: a folder of images with same-name .txt captions")
    check_model_files(cfg)

    device, rank, world = _setup_distributed(cfg.model.device)
    main = rank == 0
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        records = scan_image_folder(
            cfg.dataset.path, caption_extension=cfg.dataset.caption_extension, missing_captions=cfg.dataset.missing_captions
        )
        dtype = _DTYPES[cfg.model.dtype]
        try:
            model = load_xut(cfg.model.checkpoint, dtype=dtype, device=device)
        except CheckpointError as exc:
            raise ConfigError(f"[model] checkpoint = {cfg.model.checkpoint}: {exc}") from exc
        encoders = build_encoders(cfg, device, dtype, ctx_dim=model.config.ctx_dim)
        cache = None
        if cfg.dataset.cache_latents or cfg.dataset.cache_text:
            cache = DiskCache(cfg.dataset.cache_dir or Path(cfg.training.output_dir) / "cache")
        data = ImageFolderData(
            records, image_encoder=encoders.encode_images, text_encoder=encoders.encode_text, buckets=cfg.buckets,
            captions=cfg.captions, cache=cache, cache_latents=cfg.dataset.cache_latents, cache_text=cfg.dataset.cache_text,
            seed=cfg.training.seed,
        )  # fmt: skip
        if main:
            log.info("dataset: %d images, %d samples per epoch with repeats", len(records), sum(r.repeats for r in records))
        if cache is not None:
            _precache(data, rank, world, main)
        input_dtype, amp_dtype = input_dtypes(model, cfg.training.mixed_precision)
        sampler = None
        if main:
            sampler = make_sampler(
                cfg.sample, encoders, Path(cfg.training.output_dir) / "samples", cfg.training.output_name, device,
                input_dtype, amp_dtype,
            )  # fmt: skip
        if cfg.dataset.cache_text and not cfg.captions.is_random and data.text_encoder is not None and cache.writable:
            # every caption is cached and previews are encoded: the text encoder is not needed any more
            data.text_encoder = None
            encoders.release_text_encoder()
            if main:
                log.info("every caption is cached: the text encoder is released from memory")
        stop = _StopFlag()
        stop.install()
        bar = _ProgressBar(cfg.training.steps) if main else None
        callbacks = TrainCallbacks(
            progress=bar.update if bar else None,
            should_stop=stop,
            on_save=(lambda path, step: bar.write(f"saved {path} (step {step})")) if bar else None,
            sample=sampler,
        )
        trainer = Trainer(
            model, data, cfg.adapter, cfg.training, device=device, resume_from=cfg.resume.state or None,
            init_adapter=cfg.resume.init_adapter or None, callbacks=callbacks, metadata=_fit_metadata(cfg, records),
        )  # fmt: skip
        if bar is not None:
            bar.start(trainer.step)
        try:
            result = trainer.run()
        finally:
            stop.uninstall()
            if bar is not None:
                bar.close()
        if main:
            if result.adapter_path:
                log.info("adapter: %s", result.adapter_path)
            if result.state_path:
                log.info("resume state: %s", result.state_path)
            if result.message:
                log.log(logging.ERROR if result.status == "nan" else logging.INFO, "%s", result.message)
        return {"completed": 0, "interrupted": 130, "nan": 3}[result.status]
    finally:
        import torch.distributed as dist

        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _fit_metadata(cfg: FitConfig, records) -> dict[str, str]:
    """kohya's dataset fields plus the whole config (``hdm_fit_config``)."""
    dirs: dict[str, dict[str, int]] = {}
    for rec in records:
        entry = dirs.setdefault(rec.path.parent.name, {"n_repeats": rec.repeats, "img_count": 0})
        entry["img_count"] += 1
    return {
        "hdm_fit_config": _json(cfg.to_dict()),
        "ss_dataset_dirs": _json(dirs),
        "ss_resolution": f"({cfg.buckets.resolution}, {cfg.buckets.resolution})",
        "ss_enable_bucket": str(cfg.buckets.mode == "bucket"),
        "ss_caption_dropout_rate": str(cfg.captions.caption_dropout),
        "ss_caption_tag_dropout_rate": str(cfg.captions.tag_dropout),
        "ss_shuffle_caption": str(cfg.captions.shuffle_tags),
        "ss_keep_tokens": str(cfg.captions.keep_tokens),
    }


def _precache(data, rank: int, world: int, main: bool) -> None:
    import torch.distributed as dist

    bar = None
    if main:
        from tqdm import tqdm

        bar = tqdm(total=len(data), desc="caching", unit="img", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = min(len(data), done * world)
            bar.refresh()

    data.precache(rank=rank, world=world, progress=progress)
    if world > 1:
        dist.barrier()
    if bar is not None:
        bar.n = len(data)
        bar.close()


class _ProgressBar:
    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def start(self, initial: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=initial, desc="training", unit="step", dynamic_ncols=True)

    def update(self, info) -> None:
        if self.bar is None:
            return
        self.bar.n = info.step
        self.bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", it_s=f"{info.steps_per_second:.2f}", refresh=False)
        self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def convert(source: str, dest: str, dtype: str | None) -> int:
    from hdm_core.train import convert_hdm_adapter

    report = convert_hdm_adapter(source, dest, dtype=_DTYPES[dtype] if dtype else None)
    print(f"wrote {report.path}: {report.converted} tensors for {report.modules} modules")
    if report.dropped:
        print(f"dropped {len(report.dropped)} non-adapter tensors: {', '.join(report.dropped[:5])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Headless LyCORIS training for HDM.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fit = sub.add_parser("fit", help="train an adapter from a TOML config")
    p_fit.add_argument("config", help="TOML config (see trainer/example.toml)")
    p_fit.add_argument("--steps", type=int, help="override [training] steps")
    p_fit.add_argument("--resume", help="resume exactly from a '-state.safetensors' file")
    p_conv = sub.add_parser("convert", help="convert an HDM-trainer adapter (.pt, lycoris_model_* keys) for ComfyUI")
    p_conv.add_argument("source")
    p_conv.add_argument("dest")
    p_conv.add_argument("--dtype", choices=sorted(_DTYPES), help="cast the adapter factors (default: keep)")
    args = parser.parse_args(argv)

    from hdm_core.checkpoint import CheckpointError
    from hdm_core.train import AdapterError, DatasetError, TrainingError

    try:
        if args.command == "fit":
            return fit(load_config(args.config), steps=args.steps, resume=args.resume)
        return convert(args.source, args.dest, args.dtype)
    except (ConfigError, DatasetError, AdapterError, TrainingError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
