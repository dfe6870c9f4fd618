"""The training engine: one loop behind the headless trainer and the ComfyUI node.

:func:`train` takes a model (never left modified), a dataset, an adapter config and a
training config; it returns the saved file and the loss history. Callers observe and steer
it through :class:`TrainCallbacks` (progress, interrupt, samples). It runs the same under
``torchrun`` with PyTorch DDP when a process group is initialised.

Per optimiser step: ``grad_accum`` micro-batches, each the local slice of a global batch;
for every sample a timestep, noise and a TREAD keep-mask are drawn from a generator keyed by
(seed, micro-step, global position) — see :mod:`.objective`; forward under autocast, loss
``/ grad_accum``, backward (gradient all-reduce only on the last micro-batch); then
unscale, clip, step, zero. A non-finite loss (or, without fp16 loss scaling, non-finite
gradients) stops the run before the bad update is applied, and the adapter as it was is
saved: the last good adapter is what's on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..fileformat import sweep_stale_temporaries
from .adapters import Adapter, AdapterConfig, AdapterError, create_adapter, read_adapter, save_adapter
from .batching import BatchStream, sample_rng
from .data import Batch, TrainingData
from .objective import TimestepConfig, draw_sample_noise, flow_matching_loss, sample_generator
from .optim import OptimizerConfig, build_optimizer, set_lr
from .state import read_training_state, restore_training_state, save_training_state

MIXED_PRECISION = ("no", "bf16", "fp16")
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts optimiser steps; a batch is ``batch_size`` per process."""

    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    tread_rate: float = 0.0
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    output_dir: str = "output"
    output_name: str = "hdm_lycoris"
    save_every: int = 0
    save_dtype: str = "bf16"
    save_state: bool = True
    sample_every: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.timesteps, dict):
            object.__setattr__(self, "timesteps", TimestepConfig(**self.timesteps))
        if isinstance(self.optimizer, dict):
            object.__setattr__(self, "optimizer", OptimizerConfig(**self.optimizer))
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "sample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not 0.0 <= self.tread_rate < 1.0:
            raise ValueError(f"tread_rate must be in [0, 1) (0 = off, 0.5 = HDM pre-training), got {self.tread_rate}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got '{self.mixed_precision}'")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got '{self.save_dtype}'")
        if not self.output_name or any(c in self.output_name for c in "/\\"):
            raise ValueError(f"output_name must be a plain file name without folders, got '{self.output_name}'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optimizer"] = self.optimizer.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class StepInfo:
    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    epoch: int
    steps_per_second: float


@dataclass
class TrainCallbacks:
    """Hooks for a front-end. All run on the main process only (rank 0), except ``should_stop``."""

    progress: Callable[[StepInfo], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_save: Callable[[Path, int], None] | None = None
    sample: Callable[[int, nn.Module], None] | None = None


@dataclass
class TrainResult:
    status: str  # "completed" | "interrupted" | "nan"
    step: int
    adapter_path: Path | None
    state_path: Path | None
    saved: list[Path]
    loss_history: list[float]
    message: str = ""


# --------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "DistInfo":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def _all_max(value: float, info: DistInfo, device: torch.device) -> float:
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def _collective_device(device: torch.device) -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return device
    return torch.device("cpu")


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Put back requires_grad flags, train/eval mode and gradient checkpointing afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    ckpt = getattr(model, "gradient_checkpointing", None)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        if ckpt is not None:
            model.gradient_checkpointing = ckpt


class _Denoiser(nn.Module):
    """Model + adapter as one module, so DDP sees the adapter's parameters."""

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


#: Autocast dtype of each ``mixed_precision`` (None: none).
AMP_DTYPES: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def input_dtypes(model: nn.Module, mixed_precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype fed to the model, autocast dtype or None)."""
    base = _model_dtype(model)
    amp = AMP_DTYPES[mixed_precision]
    if base == torch.float32:
        return torch.float32, amp
    if amp is None:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(base, str(base))
        raise TrainingError(
            f"the model's weights are {name}; train with mixed_precision = \"{name}\" (the adapter keeps float32 "
            "master weights), or load the model in float32"
        )
    if amp != base:
        raise TrainingError(f"mixed_precision {mixed_precision} does not match the model's {base} weights; use the same dtype")
    return base, amp


# --------------------------------------------------------------------------- the engine
class Trainer:
    """One training run. Use :func:`train` unless you need to drive steps yourself (tests do)."""

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        adapter_config: AdapterConfig,
        config: TrainConfig,
        *,
        device: torch.device | str | None = None,
        resume_from: str | Path | None = None,
        init_adapter: str | Path | None = None,
        callbacks: TrainCallbacks | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.callbacks = callbacks or TrainCallbacks()
        self.metadata = dict(metadata or {})
        self.dist = DistInfo.current()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self.micro_step = 0
        self.loss_history: list[float] = []
        self.saved: list[Path] = []
        self._state_step: int | None = None  # the step of the last state file written by this run
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.patch_size = getattr(getattr(model, "config", None), "patch_size", 2)

        if any(p.is_inference() for p in model.parameters()):
            raise TrainingError(
                "the model's weights are inference tensors (created under torch.inference_mode) and cannot take part in "
                "autograd; clone the model outside inference mode before training"
            )
        self.input_dtype, self.amp_dtype = input_dtypes(model, config.mixed_precision)
        self.stream = BatchStream(data, config.seed, config.batch_size * self.dist.world)

        state = None
        if resume_from is not None:
            state = read_training_state(resume_from)
            saved_cfg = AdapterConfig.from_dict(state.adapter_config)
            if saved_cfg != adapter_config:
                raise TrainingError(
                    f"{resume_from} was trained with adapter settings {saved_cfg.to_dict()}, not {adapter_config.to_dict()}; "
                    "resume with the same adapter settings"
                )
        # adapter tensors must be normal tensors even when constructed under inference mode (ComfyUI)
        with torch.inference_mode(False):
            self._setup_adapter(adapter_config, state, resume_from, init_adapter)
        if self.dist.main:  # what an earlier, killed run left half-written in this run's folder
            sweep_stale_temporaries(self.output_dir)

    def _setup_adapter(self, adapter_config, state, resume_from, init_adapter) -> None:
        config = self.config
        model = self.model
        self.adapter = create_adapter(model, adapter_config, device=self.device, seed=config.seed)
        self.optimizer = build_optimizer(self.adapter.trainable_parameters(), config.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.mixed_precision == "fp16")
        if state is not None:
            restore_training_state(state, self.adapter, self.optimizer, source=str(resume_from))
            self.step, self.micro_step = state.step, state.micro_step
            self.loss_history = list(state.loss_history)
            if state.scaler and self.scaler.is_enabled():
                self.scaler.load_state_dict(state.scaler)
            if self.step >= config.steps:
                raise TrainingError(f"{resume_from} is already at step {self.step}; raise steps above {self.step} to continue")
        elif init_adapter is not None:
            file = read_adapter(init_adapter)
            if file.config is not None and file.config != adapter_config:
                raise TrainingError(f"{init_adapter} was trained with different adapter settings: {file.config.to_dict()}")
            self.adapter.load_exported(file.tensors, source=str(init_adapter))

        self.denoiser: nn.Module = _Denoiser(model, self.adapter)

    def _wrap_ddp(self) -> None:
        """Wrap for DDP once the base model is frozen, so only the adapter's tensors are synchronised."""
        if self.dist.world == 1 or not isinstance(self.denoiser, _Denoiser):
            return
        from torch.nn.parallel import DistributedDataParallel

        self.denoiser = DistributedDataParallel(
            self.denoiser,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.adapter.config.module_dropout > 0,
            broadcast_buffers=False,
        )

    # -- one micro-batch --------------------------------------------------------------------
    def local_batch(self, k: int) -> tuple[Batch, list[int]]:
        """Micro-step ``k``'s batch for this process and the global positions of its samples."""
        items = self.stream[k]
        b = self.config.batch_size
        lo = self.dist.rank * b
        positions = list(range(lo, lo + b))
        rngs = [sample_rng(self.config.seed, k, j) for j in positions]
        return self.data.batch([items[j] for j in positions], rngs), positions

    def micro_batch_loss(self, k: int) -> torch.Tensor:
        """Forward one micro-batch; returns the (unscaled) float32 loss."""
        batch, positions = self.local_batch(k)
        _, c, h, w = batch.latents.shape
        draws = [
            draw_sample_noise(
                (c, h, w), self.config.timesteps, sample_generator(self.config.seed, k, j), self.config.tread_rate, self.patch_size
            )
            for j in positions
        ]
        dev = self.device
        z = batch.latents.to(dev)
        noise = torch.stack([d.noise for d in draws]).to(dev)
        t = torch.tensor([d.t for d in draws], dtype=torch.float32, device=dev)
        tread = torch.stack([d.tread_keep for d in draws]).to(dev) if self.config.tread_rate > 0 else None
        ctx = batch.ctx.to(dev, self.input_dtype)
        mask = batch.ctx_mask.to(dev) if batch.ctx_mask is not None else None
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return flow_matching_loss(
                self.denoiser, z, noise, t, ctx,
                ctx_mask=mask, pos_map=batch.pos_map.to(dev), addon_info=batch.addon_info.to(dev, self.input_dtype),
                tread_mask=tread, input_dtype=self.input_dtype,
            )  # fmt: skip

    def backward_micro_batches(self) -> float:
        """Forward + backward of one optimiser step's micro-batches; returns the mean loss (all ranks)."""
        total = 0.0
        accum = self.config.grad_accum
        for a in range(accum):
            k = self.micro_step + a
            sync = a == accum - 1 or self.dist.world == 1
            ctx = contextlib.nullcontext() if sync else self.denoiser.no_sync()
            with ctx:
                loss = self.micro_batch_loss(k)
                # backward even for a non-finite loss: under DDP every rank must reach the all-reduce
                self.scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
        cdev = _collective_device(self.device)
        bad = _all_max(0.0 if math.isfinite(total) else 1.0, self.dist, cdev)
        return math.nan if bad else _all_mean(total, self.dist, cdev)

    def optimizer_step(self) -> tuple[float, bool]:
        """Unscale, clip, step. Returns (grad norm, whether the gradients were finite)."""
        params = [p for _, p in self.adapter.trainable_parameters()]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.optimizer.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
        norm_value = float(norm)
        finite = math.isfinite(norm_value)
        if finite or self.scaler.is_enabled():  # the fp16 scaler skips non-finite steps itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm_value, finite

    # -- saving -----------------------------------------------------------------------------
    def _train_metadata(self) -> dict[str, Any]:
        c = self.config
        meta = {
            "ss_steps": self.step,
            "ss_epoch": self.stream.epoch_of(max(0, self.micro_step - 1)) + 1,
            "ss_learning_rate": c.optimizer.lr,
            "ss_unet_lr": c.optimizer.lr,
            "ss_optimizer": f"torch.optim.AdamW(weight_decay={c.optimizer.weight_decay},betas={list(c.optimizer.betas)})",
            "ss_lr_scheduler": c.optimizer.scheduler,
            "ss_lr_warmup_steps": c.optimizer.warmup_steps,
            "ss_max_grad_norm": c.optimizer.max_grad_norm,
            "ss_batch_size_per_device": c.batch_size,
            "ss_gradient_accumulation_steps": c.grad_accum,
            "ss_num_processes": self.dist.world,
            "ss_mixed_precision": c.mixed_precision,
            "ss_gradient_checkpointing": c.gradient_checkpointing,
            "ss_seed": c.seed,
            "ss_num_train_images": len(self.data),
            "ss_training_started_at": self.started_at,
            "ss_training_finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ss_timestep_sampling": c.timesteps.distribution,
            "ss_save_precision": c.save_dtype,
            "hdm_tread_rate": c.tread_rate,
            "hdm_mup": c.optimizer.mup,
            "hdm_train_config": json.dumps(c.to_dict(), sort_keys=True),
            "modelspec.date": datetime.now(timezone.utc).date().isoformat(),
            "modelspec.title": c.output_name,
        }
        meta.update(self.metadata)
        return meta

    def save(self, final: bool) -> Path | None:
        """Write the adapter (and the resume state) on the main process; returns the adapter path.

        Called on every process: a failed save raises :class:`TrainingError` on all of them
        (data-parallel peers would otherwise wait for the main process forever).
        """
        error: TrainingError | None = None
        path = None
        if self.dist.main:
            try:
                path = self._save_main(final)
            except TrainingError as exc:
                error = exc
        if self.dist.world > 1:
            failed = _all_max(1.0 if error is not None else 0.0, self.dist, _collective_device(self.device))
            if failed and error is None:
                raise TrainingError(f"the main process could not save at step {self.step}; training stopped (see its error)")
        if error is not None:
            raise error
        return path

    def _save_main(self, final: bool) -> Path | None:
        if not all(torch.isfinite(p).all() for _, p in self.adapter.trainable_parameters()):
            log.error("adapter weights are not finite at step %d; not saving over the last good file", self.step)
            return None
        name = self.config.output_name if final else f"{self.config.output_name}-step{self.step:06d}"
        try:
            path = save_adapter(
                self.adapter, self.output_dir / f"{name}.safetensors", dtype=SAVE_DTYPES[self.config.save_dtype],
                metadata=self._train_metadata(),
            )  # fmt: skip
            self.saved.append(path)
            if self.config.save_state:
                save_training_state(
                    self.state_path, self.adapter, self.optimizer, step=self.step, micro_step=self.micro_step,
                    loss_history=self.loss_history, train_config=self.config.to_dict(),
                    scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                )  # fmt: skip
        except OSError as exc:  # SaveError: disk full, permission denied, ... (names the path and cause)
            kept = f"the last good adapter is {self.saved[-1]}" if self.saved else "no adapter was saved before"
            if self.config.save_state and self.state_path.is_file():
                at = f" (step {self._state_step})" if self._state_step is not None else ""
                kept += f", the resume state is {self.state_path}{at}"
            then = "resume from the state file" if self.config.save_state and self.state_path.is_file() else "train again"
            raise TrainingError(f"saving at step {self.step} failed: {exc}. Training stopped; {kept}. Fix the cause and {then}") from exc
        if self.config.save_state:
            self._state_step = self.step
        if self.callbacks.on_save is not None:
            self.callbacks.on_save(path, self.step)
        return path

    @property
    def state_path(self) -> Path:
        return self.output_dir / f"{self.config.output_name}-state.safetensors"

    # -- the loop ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Model frozen and patched with the adapter, grads on (even under inference mode).

        On exit — normal or by an exception — the adapter is removed and the model's
        requires_grad flags, train/eval modes and checkpointing flag are put back.
        """
        with preserved_model_state(self.model), torch.inference_mode(False), torch.enable_grad(), self.adapter.patched():
            self.model.requires_grad_(False)
            if hasattr(self.model, "set_gradient_checkpointing"):
                self.model.set_gradient_checkpointing(self.config.gradient_checkpointing)
            self._wrap_ddp()
            self.adapter.train()
            try:
                yield
            finally:
                self.adapter.eval()

    def _stop_requested(self) -> bool:
        flag = bool(self.callbacks.should_stop and self.callbacks.should_stop())
        return bool(_all_max(1.0 if flag else 0.0, self.dist, _collective_device(self.device)))

    def run(self) -> TrainResult:
        cfg = self.config
        status, message = "completed", ""
        last_path: Path | None = None
        timer = time.perf_counter()
        start_step = self.step
        with self.session():
            while self.step < cfg.steps:
                if self._stop_requested():
                    status, message = "interrupted", f"stopped at step {self.step} on request"
                    break
                lr = set_lr(self.optimizer, self.step, cfg.steps, cfg.optimizer)
                loss = self.backward_micro_batches()
                if not math.isfinite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    status = "nan"
                    message = f"the loss became {loss} at step {self.step + 1}; stopped before applying that update"
                    break
                norm, finite = self.optimizer_step()
                if not finite and not self.scaler.is_enabled():
                    status = "nan"
                    message = f"gradients became non-finite at step {self.step + 1}; stopped, the update was not applied"
                    break
                self.step += 1
                self.micro_step += cfg.grad_accum
                self.loss_history.append(loss)
                elapsed = time.perf_counter() - timer
                if self.dist.main and self.callbacks.progress is not None:
                    rate = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
                    epoch = self.stream.epoch_of(self.micro_step - 1) + 1
                    self.callbacks.progress(StepInfo(self.step, cfg.steps, loss, lr, norm, epoch, rate))
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    last_path = self.save(final=False) or last_path
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.dist.main and self.callbacks.sample:
                    self.adapter.eval()  # no adapter dropout in previews
                    try:
                        with torch.no_grad():
                            self.callbacks.sample(self.step, self.model)
                    finally:
                        self.adapter.train()
            if self.step > 0:
                last_path = self.save(final=True) or last_path
            elif not message:
                message = "no step was trained, nothing was saved"
        if status == "nan":
            log.error("%s", message)
        if self.dist.world > 1:
            dist.barrier()
        return TrainResult(
            status, self.step, last_path, self.state_path if cfg.save_state and last_path else None,
            list(self.saved), list(self.loss_history), message,
        )  # fmt: skip


def train(
    model: nn.Module,
    data: TrainingData,
    adapter_config: AdapterConfig,
    config: TrainConfig,
    **kwargs: Any,
) -> TrainResult:
    """Train an adapter on ``model`` (which is left exactly as it was) and save it.

    Keyword arguments are those of :class:`Trainer` (``device``, ``resume_from``,
    ``init_adapter``, ``callbacks``, ``metadata``).
    """
    try:
        return Trainer(model, data, adapter_config, config, **kwargs).run()
    except AdapterError as exc:
        raise TrainingError(str(exc)) from exc
