"""The exact-resume training state: adapter tensors, optimiser moments, counters, losses.

One ``.safetensors`` file (no pickle), written atomically next to the adapters. Tensors:
``adapter/param/<name>``, ``adapter/buffer/<name>`` (float32, as trained) and
``optim/<param name>/<state key>``; everything else (step, micro-step, loss history,
grad-scaler state, the configs) is JSON in the ``hdm_train_state`` metadata entry.
Randomness needs no state: every draw is keyed by (seed, micro-step, sample).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_state_dict, save_safetensors
from .adapters import Adapter, AdapterError

STATE_VERSION = 1
STATE_KEY = "hdm_train_state"


@dataclass
class TrainingState:
    step: int
    micro_step: int
    loss_history: list[float]
    adapter_config: dict[str, Any]
    train_config: dict[str, Any]
    scaler: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def save_training_state(
    path: str | Path,
    adapter: Adapter,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    micro_step: int,
    loss_history: list[float],
    train_config: dict[str, Any],
    scaler: dict[str, Any] | None = None,
) -> Path:
    tensors = {f"adapter/{k}": v for k, v in adapter.raw_state().items()}
    extra: dict[str, Any] = {}
    for group in optimizer.param_groups:
        for name, param in zip(group["names"], group["params"]):
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"optim/{name}/{key}"] = value.detach().to("cpu").clone()
                else:
                    extra[f"{name}/{key}"] = value
    meta = {
        "version": STATE_VERSION,
        "step": step,
        "micro_step": micro_step,
        "loss_history": loss_history,
        "adapter_config": adapter.config.to_dict(),
        "train_config": train_config,
        "scaler": scaler,
        "optim_extra": extra,
    }
    return save_safetensors(tensors, path, {STATE_KEY: json.dumps(meta)})


def read_training_state(path: str | Path) -> TrainingState:
    path = Path(path)
    sd = read_state_dict(path)
    raw = (getattr(sd, "metadata", None) or {}).get(STATE_KEY)
    if raw is None:
        raise AdapterError(
            f"{path}: not a training state (no {STATE_KEY} metadata). Resume from the '-state.safetensors' file "
            "the trainer writes next to the adapters; an adapter file alone can only initialise a new run"
        )
    meta = json.loads(raw)
    if meta.get("version") != STATE_VERSION:
        raise AdapterError(f"{path}: training state version {meta.get('version')} is not supported (expected {STATE_VERSION})")
    state = TrainingState(
        step=int(meta["step"]),
        micro_step=int(meta["micro_step"]),
        loss_history=[float(x) for x in meta["loss_history"]],
        adapter_config=meta["adapter_config"],
        train_config=meta["train_config"],
        scaler=meta.get("scaler"),
        tensors={k: sd[k] for k in sd},
    )
    state.train_config["_optim_extra"] = meta.get("optim_extra", {})
    return state


def restore_training_state(state: TrainingState, adapter: Adapter, optimizer: torch.optim.Optimizer, *, source: str) -> None:
    """Load adapter tensors and optimiser moments from ``state`` (strict)."""
    adapter.load_raw_state({k[len("adapter/"):]: v for k, v in state.tensors.items() if k.startswith("adapter/")}, source=source)
    extra = state.train_config.get("_optim_extra", {})
    current = optimizer.state_dict()  # param_groups with integer ids in parameter order
    new_state: dict[int, dict[str, Any]] = {}
    names = set()
    index = 0
    for group in optimizer.param_groups:
        for name in group["names"]:
            names.add(name)
            entry: dict[str, Any] = {}
            prefix = f"optim/{name}/"
            for key, value in state.tensors.items():
                if key.startswith(prefix):
                    entry[key[len(prefix):]] = value.clone()
            for key, value in extra.items():
                if key.startswith(name + "/"):
                    entry[key[len(name) + 1:]] = value
            if entry:
                new_state[index] = entry
            index += 1
    stale = {k.split("/")[1] for k in state.tensors if k.startswith("optim/")} - names
    if stale:
        raise AdapterError(f"{source}: optimiser state for unknown parameters ({', '.join(sorted(stale)[:3])})")
    # load_state_dict puts moments on each parameter's device and keeps 'step' where AdamW wants it
    optimizer.load_state_dict({"state": new_state, "param_groups": current["param_groups"]})
