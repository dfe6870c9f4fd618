"""HDM Train LyCORIS: adapter training inside ComfyUI, on ``hdm_core.train``'s engine.

The node is a thin front-end; every step is ordered so that it is safe to run between
normal prompts:

1. **Check everything cheap first** — an HDM MODEL, exactly one data source, the adapter
   and training settings, the dataset's size — before any slow work.
2. **Encode the dataset once, through ComfyUI's own objects** (``train_data``): captions with
   HDM Text Encode's code on the CLIP, images with the VAE's ``encode`` and the MODEL's
   ``latent_format.process_in``, one crop per image drawn from the seed, before training.
3. **Copy the MODEL's effective weights** — loaded with ``comfy.model_management`` and read
   the way Checkpoint Save reads them, so LoRAs already applied to the MODEL are part of
   the base — into a private float32 ``hdm_core`` XUT made of normal (non-inference)
   tensors with PyTorch attention (which has a backward pass, unlike some of ComfyUI's
   kernels). The shared model is only loaded (as for sampling) and read: the node never
   patches it or gives it to autograd, so nothing can leave it modified, whatever happens
   during training (tests/test_comfy_train_node.py checks its weights bit for bit).
4. **Train** after freeing the device (other models are unloaded, as ComfyUI's own Train
   LoRA node does; the next prompt loads them again), then drop the copy.
5. **Save** into ``models/loras`` under a name no earlier file uses (LoraLoader caches
   tensors by file name, so overwriting would show stale results), atomically, in the
   engine's format; **return** the MODEL with that file applied by ComfyUI's normal LoRA
   path (``load_torch_file`` + ``load_lora_for_models`` on a clone), a loss curve and the
   file name as LoraLoader lists it.

The algorithm's options (``train_algorithm``): on ComfyUI with ``DynamicCombo`` and
``accept_all_inputs`` (v0.33) ``algorithm`` is a DynamicCombo that shows only the chosen
algorithm's options (rank/alpha for the LoRA family, + lokr_factor for lokr, a block size for
diag-oft/boft, none for full); elsewhere (0.3.64) the inputs are the flat ones every release saved.
Workflows saved with the flat inputs keep running on both: API prompts with flat ``rank`` …
(literals or links) reach the node because it accepts all inputs, and win over the nested
defaults; UI workflows, whose ``widgets_values`` the frontend restores by position while the
DynamicCombo inserts its widgets after itself, are rewritten into the new layout on load by the
pack's frontend extension (web/hdm_dynamic_combo.js). Rarely changed options are *advanced* (v0.33).
The data source (``train_data``) follows the same rule: on v0.33 one optional DynamicCombo
``data_source`` (folder / images / latent) shows only the chosen source's inputs; elsewhere
``dataset_folder`` … and the optional ``images``, ``latent`` … inputs are the flat ones.

Interrupt (ComfyUI's cancel): training stops after the current step, the adapter trained so
far is saved under the run's final name, and the prompt ends as interrupted. A non-finite
loss stops before the bad update and keeps the last good adapter (an error names the file).
"""

from __future__ import annotations

import dataclasses
import gc
import glob
import hashlib
import inspect
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

import comfy.model_management as mm
import comfy.sd
import comfy.utils
import folder_paths

from ..hdm_core.checkpoint import CheckpointError, check_weight_file, load_xut
from ..hdm_core.train import (
    TARGET_PRESETS,
    AdapterConfig,
    AdapterError,
    DatasetError,
    OptimizerConfig,
    StepInfo,
    TrainCallbacks,
    TrainConfig,
    TrainingError,
    train,
)
from ..hdm_core.train.optim import SCHEDULERS
from ..hdm_core.train.plot import loss_curve_image
from .train_algorithm import algorithm_input, algorithm_settings
from .train_data import build_dataset, check_dataset_folder, data_inputs_head, data_inputs_tail, data_settings, resolve_dataset_folder
from .train_errors import NODE, TrainNodeError, fail
from .train_preview import PREVIEW_CFG, PREVIEW_STEPS, TrainingPreview
from .v3 import ADVANCED, DYNAMIC_INPUTS, check_inputs, io, schema

log = logging.getLogger(__name__)

PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
#: Seconds between progress-text updates (the last step is always reported).
TEXT_INTERVAL = 0.5
#: Characters no file name may hold on some system ComfyUI runs on (Windows, mostly).
FORBIDDEN_NAME_CHARS = frozenset('<>:"|?*')


# ----------------------------------------------------------------------------- the MODEL
def hdm_diffusion_model(model) -> torch.nn.Module:
    """The XUT inside an HDM MODEL, or a clear error for any other MODEL."""
    inner = getattr(model, "model", None)
    dm = getattr(inner, "diffusion_model", None)
    # by class name, not identity: the pack may be imported more than once in one process
    if dm is None or not hasattr(dm, "config") or not any(c.__name__ == "XUT" for c in type(dm).__mro__):
        what = type(dm if dm is not None else inner if inner is not None else model).__name__
        raise fail(
            f"the MODEL is not an HDM model (its diffusion model is {what}); this node trains HDM (XUT) models only. "
            "Connect the MODEL output of HDM Checkpoint Loader."
        )
    return dm


def effective_weights(model) -> dict[str, torch.Tensor]:
    """The MODEL's diffusion-model weights as sampling uses them (its LoRAs applied), float32 CPU copies.

    The model is loaded with ComfyUI's model management and read the way Checkpoint Save
    reads it (on v0.33+ through ``model_state_dict_for_saving``, whose lazily patched
    tensors cover weights that are not patched in place). The copies are normal tensors
    even though nodes run under ``torch.inference_mode()``, and share nothing with the
    shared model.
    """
    mm.load_models_gpu([model], force_patch_weights=True)
    dm = model.model.diffusion_model
    if hasattr(model, "model_state_dict_for_saving"):
        sd = model.model_state_dict_for_saving(dm, "diffusion_model.")
    else:
        sd = dm.state_dict()
    out = {}
    with torch.inference_mode(False):
        for key, value in sd.items():
            value = value.to("cpu")  # ComfyUI's lazy tensors patch and cast on this call
            out[key] = value.detach().to(torch.float32 if value.is_floating_point() else value.dtype, copy=True)
    return out


def training_precision(precision: str, device: torch.device) -> str:
    """The engine's ``mixed_precision`` for the node's ``precision`` input on ``device``."""
    if precision == "fp32":
        return "no"
    if precision in ("bf16", "fp16"):
        return precision
    if precision != "auto":
        raise fail(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if device.type == "cpu":
        return "no"
    if mm.should_use_bf16(device):
        return "bf16"
    if mm.should_use_fp16(device):
        return "fp16"
    return "no"


# ----------------------------------------------------------------------------- outputs
def split_save_name(save_name: str) -> tuple[list[str], str]:
    """``save_name`` → (sub-folders of models/loras, file stem), refusing paths that leave the folder."""
    name = save_name.strip().replace("\\", "/")
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    parts = name.split("/")
    bad_chars = any(c in FORBIDDEN_NAME_CHARS or ord(c) < 32 for c in name)
    if not name or os.path.isabs(name) or bad_chars or any(p.strip() in ("", ".", "..") or p != p.rstrip(". ") for p in parts):
        raise fail(
            f"save_name must be a file name, optionally inside sub-folders of models/loras (e.g. 'hdm/my_style'), "
            f"without {' '.join(sorted(FORBIDDEN_NAME_CHARS))}, '..' or a trailing dot or space; not {save_name!r}"
        )
    return parts[:-1], parts[-1]


def _taken(folder: Path, stem: str) -> bool:
    if (folder / f"{stem}.safetensors").exists():
        return True
    return bool(glob.glob(os.path.join(glob.escape(str(folder)), glob.escape(stem) + "-step*.safetensors")))


def output_target(save_name: str) -> tuple[Path, Path, str]:
    """(models/loras root, the run's folder, a file stem no earlier file uses: ``name``, ``name_001`` …)."""
    root = Path(folder_paths.get_folder_paths("loras")[0])
    subdirs, stem = split_save_name(save_name)
    folder = root.joinpath(*subdirs)
    candidate, n = stem, 0
    while _taken(folder, candidate):
        n += 1
        candidate = f"{stem}_{n:03d}"
    return root, folder, candidate


def lora_list_name(root: Path, path: Path) -> str:
    """The file's name as LoraLoader lists it (relative to the loras folder)."""
    return os.path.relpath(str(path), str(root))


def apply_lora(model, path: Path):
    """``model`` + the adapter file, through ComfyUI's LoRA loader path (as LoraLoaderModelOnly does)."""
    check_weight_file(path)  # HDM's one format probe, as every reader of the pack
    lora, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    kwargs = {}
    if "lora_metadata" in inspect.signature(comfy.sd.load_lora_for_models).parameters:
        kwargs["lora_metadata"] = metadata
    return comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0, **kwargs)[0]


def image_to_tensor(img) -> torch.Tensor:
    """A PIL RGB image as a ComfyUI IMAGE ``[1, H, W, 3]`` in [0, 1]."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return data.float().div(255.0)[None]


def save_preview(img) -> dict[str, str]:
    """Write the loss curve to ComfyUI's temp folder for the node's own preview."""
    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"hdm_loss_{uuid.uuid4().hex[:12]}.png"
    img.save(os.path.join(folder, name), compress_level=4)
    return {"filename": name, "subfolder": "", "type": "temp"}


# ----------------------------------------------------------------------------- progress
class Progress:
    """ComfyUI progress bar + text for the engine's callbacks, and the interrupt flag.

    ComfyUI's progress hook raises ``InterruptProcessingException`` (clearing the flag) when
    the user cancels; raised inside the engine it would skip the save, so it is caught here
    and turned into a stop request the engine honours before the next step.
    """

    def __init__(self, node_id: str | None) -> None:
        self.node_id = node_id
        self.interrupted = False
        self.bar = None
        self._last_text = 0.0

    def stage(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=self.node_id)

    def update(self, value: int, total: int, preview: tuple | None = None) -> None:
        try:
            self.bar.update_absolute(value, total, preview)
        except mm.InterruptProcessingException:
            self.interrupted = True

    def preview(self, step: int, image: tuple) -> None:
        """Show a sample image (``("JPEG", PIL image, max size)``) in the node's progress preview."""
        self.update(step, self.bar.total, image)

    def text(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_text < TEXT_INTERVAL:
            return
        self._last_text = now
        if self.node_id is None:
            return
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(message, self.node_id)
        except Exception:  # no server (scripts) or an old one: the text is a nicety
            pass

    def on_step(self, info: StepInfo) -> None:
        self.update(info.step, info.total_steps)
        self.text(
            f"step {info.step}/{info.total_steps}  loss {info.loss:.4f}  lr {info.lr:.3g}  {info.steps_per_second:.2f} it/s",
            force=info.step == info.total_steps,
        )

    def should_stop(self) -> bool:
        return self.interrupted or mm.processing_interrupted()

    def raise_if_interrupted(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise mm.InterruptProcessingException()
        mm.throw_exception_if_processing_interrupted()


# ----------------------------------------------------------------------------- the node
class HDMTrainLyCORIS(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMTrainLyCORIS",
            display_name="HDM Train LyCORIS",
            description=(
                "Trains a LyCORIS adapter (lora, locon, loha, lokr, dora, glora, diag-oft, boft, full) on an HDM model with HDM's "
                "rectified-flow objective and TREAD routing, saves it to models/loras and returns the model with it applied."
            ),
            search_aliases=["train lora", "lora training", "lycoris", "lokr", "loha", "fine-tune hdm", "anime lora"],
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The HDM model to train on (HDM Checkpoint Loader). LoRAs already applied to it become part of the base the adapter is trained on; the MODEL itself is never modified."),
                *data_inputs_head(),  # dataset_folder, resolution, crop, missing_captions, bracket_mode (flat layout only)
                *algorithm_input(),  # algorithm, rank, alpha, lokr_factor (flat) or one DynamicCombo
                io.Combo.Input("target", options=list(TARGET_PRESETS), default="attn-mlp", tooltip="Which layers get an adapter: attn (self/cross-attention projections), attn-mlp (+ the MLPs), full (every linear layer, and the patch conv for all algorithms except plain lora)."),
                io.String.Input("exclude", **ADVANCED, default="", tooltip="Layers to leave out: regular expressions separated by spaces, each matched against the whole module path, e.g. 'backbone\\.dec_blocks\\.1\\..* out_patch\\.proj'."),
                io.Int.Input("steps", default=500, min=1, max=1000000, tooltip="Optimiser steps to train."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per step. With buckets, a batch holds images of one size, so each size needs at least this many images (with repeats)."),
                io.Float.Input("learning_rate", default=0.0001, min=0.0000001, max=1.0, step=0.0000001, tooltip="AdamW learning rate (peak, after warm-up). 1e-4 suits lora; oft/boft and lokr often like more."),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="cosine", tooltip="Learning-rate schedule after the warm-up: cosine or linear decay to 0, or constant."),
                io.Int.Input("warmup_steps", **ADVANCED, default=0, min=0, max=100000, tooltip="Steps of linear learning-rate warm-up from 0."),
                io.Float.Input("tread_rate", **ADVANCED, default=0.5, min=0.0, max=0.95, step=0.05, tooltip="TREAD: fraction of image tokens routed around the backbone while training (0.5 = HDM's pre-training; 0 = off). Faster steps; sampling still uses all tokens."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed of everything random: adapter initialisation, crops, batch order, timesteps, noise and TREAD routing. The same seed and inputs train the same adapter."),
                io.String.Input("save_name", default="hdm_lycoris", tooltip="File name in models/loras (sub-folders allowed, e.g. 'hdm/my_style'). An existing name is never overwritten: _001, _002 … is appended. Periodic saves add -stepNNNNNN."),
                io.Int.Input("save_every", **ADVANCED, default=0, min=0, max=1000000, tooltip="Also save the adapter every N steps (as <name>-stepNNNNNN.safetensors); 0 = only at the end."),
                io.Boolean.Input("gradient_checkpointing", **ADVANCED, default=False, tooltip="Recompute each transformer block in the backward pass: much less memory, about a third slower."),
                io.Combo.Input("precision", **ADVANCED, options=PRECISIONS, default="auto", tooltip="Compute precision (the model copy and the adapter stay float32): auto = bf16 on GPUs that support it, else fp16 on GPUs, fp32 on the CPU; fp16 uses loss scaling."),
                io.Clip.Input("clip", optional=True, tooltip="HDM's Qwen3-0.6B text encoder (HDM Checkpoint Loader), to encode captions of a folder or IMAGE batch."),
                io.Vae.Input("vae", optional=True, tooltip="The EQ-SDXL-VAE (HDM Checkpoint Loader), to encode the images of a folder or IMAGE batch (and to decode previews)."),
                *data_inputs_tail(),  # images, captions, latent, conditioning (flat) or the data_source DynamicCombo
                # optional and last: workflows saved before it existed load and run unchanged (0 = off)
                io.Int.Input("preview_every", optional=True, default=0, min=0, max=1000000, tooltip=f"Show a sample image in this node's preview every N steps (0 = off): the first caption, seed 'seed', euler {PREVIEW_STEPS} steps at CFG {PREVIEW_CFG}, at the first image's size, with the adapter trained so far; decoded by the VAE when connected, else a rough latent preview. Costs that many sampling steps each time; never changes the trained adapter."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="The input MODEL with the trained adapter applied through ComfyUI's normal LoRA loader (strength 1)."),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="The loss per step (grey) and its moving average (blue)."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The saved file's name in models/loras, as Load LoRA lists it."),
            ],
            hidden=[io.Hidden.unique_id],
            **({"accept_all_inputs": True} if DYNAMIC_INPUTS else {}),  # the flat algorithm and data inputs of older prompts
        )

    @classmethod
    def validate_inputs(cls, save_name=None, data_source=None, dataset_folder=None, **values) -> bool | str:
        """A bad save name, a missing dataset folder, an unknown option or a number out of range is
        refused before the graph runs, in either layout (linked values arrive as None).

        ``**values``: ComfyUI then passes the DynamicCombos' nested values too, and leaves every
        option and range check to the node (``v3.check_inputs``).
        """
        if isinstance(save_name, str):
            try:
                split_save_name(save_name)
            except TrainNodeError as exc:
                return str(exc)
        folder = check_dataset_folder(data_settings(data_source, dataset_folder=dataset_folder)["dataset_folder"])
        if folder is not True:
            return folder
        return check_inputs(cls, data_source=data_source, dataset_folder=dataset_folder, **values)

    @classmethod
    def fingerprint_inputs(cls, dataset_folder=None, data_source=None, **kwargs):
        """A folder's listing (names, sizes, times), so edited datasets train again; otherwise the inputs decide."""
        dataset_folder = data_settings(data_source, dataset_folder=dataset_folder)["dataset_folder"]
        if not isinstance(dataset_folder, str) or not dataset_folder.strip():
            return ""
        root = resolve_dataset_folder(dataset_folder)
        digest = hashlib.sha256(str(root).encode())
        try:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    st = path.stat()
                    digest.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            pass
        return digest.hexdigest()

    # -- inputs -------------------------------------------------------------------------------
    @staticmethod
    def configs(algorithm, rank, alpha, lokr_factor, target, exclude, steps, batch_size, learning_rate, scheduler,
                warmup_steps, tread_rate, seed, save_every, gradient_checkpointing, mixed_precision) -> tuple[AdapterConfig, TrainConfig]:  # fmt: skip
        try:
            adapter = AdapterConfig(
                algo=algorithm, dim=int(rank), alpha=float(alpha), factor=int(lokr_factor), preset=target,
                exclude=tuple((exclude or "").split()),
            )  # fmt: skip
            config = TrainConfig(
                steps=int(steps), batch_size=int(batch_size), seed=int(seed), tread_rate=float(tread_rate),
                optimizer=OptimizerConfig(lr=float(learning_rate), scheduler=scheduler, warmup_steps=int(warmup_steps)),
                mixed_precision=mixed_precision, gradient_checkpointing=bool(gradient_checkpointing),
                save_every=int(save_every), save_state=False, output_name="run",
            )  # fmt: skip
        except (AdapterError, ValueError) as exc:
            raise fail(str(exc)) from exc
        return adapter, config

    # -- run ----------------------------------------------------------------------------------
    @classmethod
    def execute(cls, model, *, algorithm, target, exclude, steps, batch_size, learning_rate, scheduler, warmup_steps, tread_rate,
                seed, save_name, save_every, gradient_checkpointing, precision, clip=None, vae=None, data_source=None,
                preview_every=0, rank=None, alpha=None, lokr_factor=None, **flat_data) -> io.NodeOutput:  # fmt: skip
        # flat_data: the data inputs of the flat layout (dataset_folder, images, …), and, with accept_all_inputs,
        # any input this node does not know (ignored, as ComfyUI does elsewhere)
        data = data_settings(data_source, **flat_data)  # (reads only the data inputs' names)
        try:
            algorithm, rank, alpha, lokr_factor = algorithm_settings(algorithm, rank=rank, alpha=alpha, lokr_factor=lokr_factor)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        unique_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        device = mm.get_torch_device()
        dm = hdm_diffusion_model(model)
        mixed = training_precision(precision, device)
        adapter_cfg, base_cfg = cls.configs(
            algorithm, rank, alpha, lokr_factor, target, exclude, steps, batch_size, learning_rate, scheduler,
            warmup_steps, tread_rate, seed, save_every, gradient_checkpointing, mixed,
        )  # fmt: skip
        split_save_name(save_name)  # a bad name fails before any work
        progress = Progress(None if unique_id is None else str(unique_id))
        try:
            source = build_dataset(
                model, int(dm.config.ctx_dim), data, clip=clip, vae=vae, seed=seed, batch_size=int(batch_size), progress=progress
            )
        except DatasetError as exc:
            raise fail(str(exc)) from exc
        progress.raise_if_interrupted()

        root, folder, stem = output_target(save_name)
        config = dataclasses.replace(base_cfg, output_dir=str(folder), output_name=stem, sample_every=int(preview_every or 0))
        metadata: dict[str, Any] = {
            "ss_num_train_images": source.images,
            "hdm_dataset": source.description,
            "hdm_trained_in": f"ComfyUI ({NODE})",
        }
        if not source.from_latents:
            metadata["ss_resolution"] = f"({int(data['resolution'])}, {int(data['resolution'])})"
        progress.text("reading the model's weights", force=True)
        try:
            weights = effective_weights(model)
        except Exception as exc:
            raise fail(f"cannot read the MODEL's weights for training ({type(exc).__name__}: {exc})") from exc
        mm.free_memory(1e30, device)  # training needs the device; the next prompt reloads what it uses
        xut = None
        try:
            with torch.inference_mode(False):
                try:
                    xut = load_xut(weights, dtype=torch.float32, device=device)
                except CheckpointError as exc:
                    raise fail(f"cannot build the training copy of the model: {exc}") from exc
                del weights
                progress.stage(config.steps)
                progress.text(f"training {adapter_cfg.algo} on {source.description}: {config.steps} steps", force=True)
                sample = None
                if config.sample_every:
                    sample = TrainingPreview(
                        model, vae, source.data.contexts[0], source.data.latents[0], int(seed), device, mixed, progress.preview
                    )  # fmt: skip
                callbacks = TrainCallbacks(progress=progress.on_step, should_stop=progress.should_stop, sample=sample)
                try:
                    result = train(xut, source.data, adapter_cfg, config, device=device, callbacks=callbacks, metadata=metadata)
                except (TrainingError, AdapterError, DatasetError) as exc:
                    raise fail(str(exc)) from exc
        finally:
            del xut
            gc.collect()
            mm.soft_empty_cache()

        saved = result.adapter_path
        name = lora_list_name(root, saved) if saved is not None else None
        if result.status == "interrupted" or (result.status == "completed" and progress.interrupted):
            # (a cancel during the last step still ends the prompt as cancelled; the adapter is saved either way)
            where = f"the adapter trained so far (step {result.step}) is saved as {name}" if name else "nothing was saved"
            progress.text(f"interrupted at step {result.step} of {config.steps}: {where}", force=True)
            log.info("%s: interrupted at step %d; %s", NODE, result.step, where)
            mm.interrupt_current_processing(False)
            raise mm.InterruptProcessingException()
        if result.status == "nan":
            kept = f"The last good adapter (step {result.step}) is saved as {name}." if name else "Nothing was saved."
            raise RuntimeError(f"{NODE}: {result.message}. {kept} Lower the learning rate, or use precision fp32 or bf16.")
        if saved is None:
            raise RuntimeError(f"{NODE}: training ended without saving ({result.message or result.status})")
        progress.text(f"done: {result.step} steps, last loss {result.loss_history[-1]:.4f}, saved as {name}", force=True)
        log.info("%s: trained %d steps on %s, saved %s", NODE, result.step, source.description, saved)

        trained = apply_lora(model, saved)
        curve = loss_curve_image(result.loss_history, title=f"{name}: loss per step")
        return io.NodeOutput(trained, image_to_tensor(curve), name, ui={"images": [save_preview(curve)]})


__all__ = ["HDMTrainLyCORIS", "TrainNodeError", "effective_weights", "hdm_diffusion_model", "output_target"]
