"""HDM Train LyCORIS: adapter training inside ComfyUI, on ``hdm_core.train``'s engine.

The node is a thin front-end; every step is ordered so that it is safe to run between
normal prompts:

1. **Check everything cheap first** — an HDM MODEL, exactly one data source, the adapter
   and training settings, the dataset's size — before any slow work.
2. **Encode the dataset once, through ComfyUI's own objects**: captions with HDM Text
   Encode's code on the CLIP (same bracket handling, same tokens), images with the VAE's
   ``encode`` and the MODEL's ``latent_format.process_in``. The adapter therefore learns
   from exactly the inputs inference produces. Each image gets one crop (drawn from the
   seed) and its caption as written; encoding happens before training so ComfyUI never
   swaps the encoders in and out of the GPU under the model being trained.
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
The data source stays three optional inputs: a DynamicCombo there would add a widget that no saved
workflow has a value for, shifting every value after it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import comfy.model_management as mm
import comfy.sd
import comfy.utils
import folder_paths

from ..hdm_core.checkpoint import CheckpointError, check_weight_file, load_xut
from ..hdm_core.latents import LATENT_CHANNELS
from ..hdm_core.train import (
    TARGET_PRESETS,
    AdapterConfig,
    AdapterError,
    BucketConfig,
    CaptionConfig,
    DatasetError,
    ImageFolderData,
    LatentData,
    OptimizerConfig,
    StepInfo,
    TrainCallbacks,
    TrainConfig,
    TrainingError,
    scan_image_folder,
    train,
)
from ..hdm_core.train.batching import check_dataset_size
from ..hdm_core.train.buckets import CROP_MODES
from ..hdm_core.train.data import image_records
from ..hdm_core.train.optim import SCHEDULERS
from ..hdm_core.train.plot import loss_curve_image
from .conditioning import BRACKET_MODES, encode_prompt
from .train_preview import PREVIEW_CFG, PREVIEW_STEPS, TrainingPreview
from .train_algorithm import algorithm_input, algorithm_settings
from .v3 import ADVANCED, DYNAMIC_INPUTS, check_options, check_ranges, io, schema

log = logging.getLogger(__name__)

NODE = "HDM Train LyCORIS"
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
MISSING_CAPTIONS = ["error", "empty"]
#: Images per VAE call while encoding the dataset.
ENCODE_CHUNK = 4
#: Seconds between progress-text updates (the last step is always reported).
TEXT_INTERVAL = 0.5
#: Characters no file name may hold on some system ComfyUI runs on (Windows, mostly).
FORBIDDEN_NAME_CHARS = frozenset('<>:"|?*')


class TrainNodeError(ValueError):
    """Bad input to the training node; the message names the input and the fix."""


def _fail(message: str) -> TrainNodeError:
    return TrainNodeError(f"{NODE}: {message}")


# ----------------------------------------------------------------------------- the MODEL
def hdm_diffusion_model(model) -> torch.nn.Module:
    """The XUT inside an HDM MODEL, or a clear error for any other MODEL."""
    inner = getattr(model, "model", None)
    dm = getattr(inner, "diffusion_model", None)
    # by class name, not identity: the pack may be imported more than once in one process
    if dm is None or not hasattr(dm, "config") or not any(c.__name__ == "XUT" for c in type(dm).__mro__):
        what = type(dm if dm is not None else inner if inner is not None else model).__name__
        raise _fail(
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
        raise _fail(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
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
        raise _fail(
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


# ----------------------------------------------------------------------------- data
def resolve_dataset_folder(text: str) -> Path:
    """An absolute folder, or one relative to ComfyUI's input folder."""
    path = Path(os.path.expanduser(text.strip().strip('"').strip("'")))
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    return path


def split_captions(text: str | None, count: int, missing: str) -> list[str]:
    """One caption per image from a text box: one line per image, or one line for all."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        if missing == "empty":
            return [""] * count
        raise _fail(
            f"the images have no captions: write one caption per line in 'captions' ({count} lines), or a single line "
            "for all images (or set missing_captions to 'empty' to train without captions)"
        )
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise _fail(f"'captions' has {len(lines)} lines for {count} images; write one line per image, or a single line for all")
    return lines


def images_to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise _fail(f"'images' must be an IMAGE batch [B, H, W, 3], got shape {list(images.shape)}")
    arr = images[..., :3].float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class ComfyImageEncoder:
    """``pixels [B, 3, H, W]`` in [-1, 1] → VAE latents, through the ComfyUI VAE's own ``encode``."""

    def __init__(self, vae) -> None:
        self.vae = vae

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.add(1.0).mul(0.5).clamp(0.0, 1.0).movedim(1, -1))


class ComfyTextEncoder:
    """``captions → [T_i, D]`` contexts, exactly as HDM Text Encode conditions inference."""

    def __init__(self, clip, bracket_mode: str) -> None:
        self.clip = clip
        self.bracket_mode = bracket_mode

    def __call__(self, captions: list[str]) -> list[torch.Tensor]:
        return [encode_prompt(self.clip, caption, self.bracket_mode)[0][0][0] for caption in captions]


@dataclass
class DataSource:
    data: LatentData
    description: str
    images: int


def latent_dataset(model, latent: dict, conditioning: list) -> DataSource:
    """A LATENT (VAE space, e.g. from VAE Encode) + its conditioning: one context for all or one per latent."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None or not torch.is_tensor(samples) or getattr(samples, "is_nested", False):
        raise _fail("'latent' must be an image LATENT (e.g. from VAE Encode with the EQ-SDXL-VAE)")
    if samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        raise _fail(
            f"'latent' must hold HDM image latents [B, {LATENT_CHANNELS}, h, w] (VAE Encode with the EQ-SDXL-VAE), "
            f"got shape {list(samples.shape)}"
        )
    if not conditioning:
        raise _fail("'latent' needs 'conditioning' (the captions encoded with HDM Text Encode)")
    rows = [row for entry in conditioning for row in entry[0]]
    n = samples.shape[0]
    if len(rows) == 1:
        rows = rows * n
    elif len(rows) != n:
        raise _fail(f"'conditioning' holds {len(rows)} prompts for {n} latents; give one for all latents or one per latent (in order)")
    z = model.model.process_latent_in(samples.detach().float().cpu())
    return DataSource(LatentData(list(z), rows), f"LATENT ({n} latents)", n)


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
def check_dataset_folder(dataset_folder: str | None) -> bool | str:
    """validate_inputs' check of ``dataset_folder``: empty (another source) or an existing folder."""
    if not isinstance(dataset_folder, str) or not dataset_folder.strip():
        return True
    root = resolve_dataset_folder(dataset_folder)
    if not root.exists():
        return f"{NODE}: dataset folder {root} does not exist (a relative dataset_folder is looked up in ComfyUI's input folder)"
    if not root.is_dir():
        return f"{NODE}: {root} is not a folder; point the dataset at a folder of images and .txt captions"
    return True


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
                io.String.Input("dataset_folder", default="", tooltip="A kohya-style dataset folder: images with same-name .txt captions; sub-folders named N_name repeat their images N times. Absolute, or relative to ComfyUI's input folder. Leave empty when training from 'images' or 'latent'."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=16, tooltip="Training resolution in pixels (images are resized to about resolution x resolution; folder and IMAGE data)."),
                io.Combo.Input("crop", **ADVANCED, options=list(CROP_MODES), default="bucket", tooltip="bucket: aspect-ratio buckets in 16-px steps (each image keeps its shape). square: HDM's shifted square crop (short side = resolution, a random square along the long side). Either way the position map tells the model where the crop sits."),
                io.Combo.Input("missing_captions", **ADVANCED, options=MISSING_CAPTIONS, default="error", tooltip="What to do with images without a caption: 'error' stops with a list of them; 'empty' trains them with an empty caption (HDM's unconditional input)."),
                io.Combo.Input("bracket_mode", **ADVANCED, options=BRACKET_MODES, default="danbooru", tooltip="How captions are encoded, as in HDM Text Encode: danbooru keeps brackets in tags such as 'izuna (blue archive)' literal; comfy reads '(x)' as a weight. Use what you will use at inference."),
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
                io.Vae.Input("vae", optional=True, tooltip="The EQ-SDXL-VAE (HDM Checkpoint Loader), to encode the images of a folder or IMAGE batch."),
                io.Image.Input("images", optional=True, tooltip="Train on an IMAGE batch instead of a folder (with 'captions')."),
                io.String.Input("captions", optional=True, multiline=True, default="", tooltip="Captions of the 'images' batch: one line per image, or a single line for all images."),
                io.Latent.Input("latent", optional=True, tooltip="Train on ready-made latents instead (VAE Encode with the EQ-SDXL-VAE), with 'conditioning'; no CLIP or VAE needed."),
                io.Conditioning.Input("conditioning", optional=True, tooltip="Conditioning for 'latent' (HDM Text Encode): one prompt for all latents, or one per latent in order (e.g. Conditioning Combine)."),
                # optional and last: workflows saved before it existed load and run unchanged (0 = off)
                io.Int.Input("preview_every", optional=True, default=0, min=0, max=1000000, tooltip=f"Show a sample image in this node's preview every N steps (0 = off): the first caption, seed 'seed', euler {PREVIEW_STEPS} steps at CFG {PREVIEW_CFG}, at the first image's size, with the adapter trained so far; decoded by the VAE when connected, else a rough latent preview. Costs that many sampling steps each time; never changes the trained adapter."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="The input MODEL with the trained adapter applied through ComfyUI's normal LoRA loader (strength 1)."),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="The loss per step (grey) and its moving average (blue)."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The saved file's name in models/loras, as Load LoRA lists it."),
            ],
            hidden=[io.Hidden.unique_id],
            **({"accept_all_inputs": True} if DYNAMIC_INPUTS else {}),  # flat rank/alpha/lokr_factor of older prompts
        )

    @classmethod
    def validate_inputs(cls, dataset_folder=None, save_name=None, crop=None, missing_captions=None, bracket_mode=None,
                        algorithm=None, target=None, scheduler=None, precision=None, rank=None, alpha=None,
                        lokr_factor=None) -> bool | str:  # fmt: skip
        """A bad save name, a missing dataset folder or an unknown option is refused before the graph runs (linked values arrive as None)."""
        if isinstance(save_name, str):
            try:
                split_save_name(save_name)
            except TrainNodeError as exc:
                return str(exc)
        folder = check_dataset_folder(dataset_folder)
        if folder is not True:
            return folder
        ranges = check_ranges(cls, rank=rank, alpha=alpha, lokr_factor=lokr_factor)  # flat values (older prompts)
        if ranges is not True:
            return ranges
        return check_options(
            cls, crop=crop, missing_captions=missing_captions, bracket_mode=bracket_mode, algorithm=algorithm, target=target,
            scheduler=scheduler, precision=precision,
        )  # fmt: skip

    @classmethod
    def fingerprint_inputs(cls, dataset_folder="", **kwargs):
        """A folder's listing (names, sizes, times), so edited datasets train again; otherwise the inputs decide."""
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
            raise _fail(str(exc)) from exc
        return adapter, config

    @staticmethod
    def dataset(model, ctx_dim, *, dataset_folder, images, captions, latent, conditioning, clip, vae, resolution, crop,
                missing_captions, bracket_mode, seed, batch_size, progress: Progress) -> DataSource:  # fmt: skip
        """The training data from the one source given, encoded once (see the module docstring)."""
        folder_given = isinstance(dataset_folder, str) and dataset_folder.strip() != ""
        given = [name for name, on in (("dataset_folder", folder_given), ("images", images is not None), ("latent", latent is not None)) if on]
        if not given:
            raise _fail(
                "no training data: set dataset_folder (images with same-name .txt captions), or connect 'images' "
                "(with 'captions'), or 'latent' with 'conditioning'"
            )
        if len(given) > 1:
            raise _fail(f"several data sources are set ({', '.join(given)}); use exactly one (clear dataset_folder or disconnect the others)")
        if missing_captions not in MISSING_CAPTIONS:
            raise _fail(f"missing_captions must be one of {', '.join(MISSING_CAPTIONS)}, got '{missing_captions}'")

        if latent is not None:
            source = latent_dataset(model, latent, conditioning)
        else:
            if clip is None or vae is None:
                missing = " and ".join(n for n, v in (("CLIP", clip), ("VAE", vae)) if v is None)
                raise _fail(
                    f"connect the {missing} (HDM Checkpoint Loader's outputs) to encode the dataset, or train from "
                    "'latent' + 'conditioning' instead"
                )
            channels = getattr(vae, "latent_channels", LATENT_CHANNELS)
            if channels != LATENT_CHANNELS:
                raise _fail(f"the VAE makes {channels}-channel latents; HDM needs the EQ-SDXL-VAE (4 channels) from HDM Checkpoint Loader")
            try:
                buckets = BucketConfig(mode=crop, resolution=int(resolution))
            except ValueError as exc:
                raise _fail(str(exc)) from exc
            if folder_given:
                root = resolve_dataset_folder(dataset_folder)
                records = scan_image_folder(root, missing_captions=missing_captions)
                description = f"folder {root.name}"
            else:
                pil = images_to_pil(images)
                records = image_records(pil, split_captions(captions, len(pil), missing_captions))
                description = f"IMAGE batch ({len(pil)} images)"
            folder_data = ImageFolderData(
                records, image_encoder=ComfyImageEncoder(vae), text_encoder=ComfyTextEncoder(clip, bracket_mode),
                buckets=buckets, captions=CaptionConfig(shuffle_tags=False), seed=int(seed),
                normalize_latents=model.model.process_latent_in,
            )  # fmt: skip
            check_dataset_size(folder_data, batch_size)  # before the slow encoding
            progress.stage(len(records))
            progress.text(f"encoding {len(records)} images and their captions", force=True)

            def encoded(done: int, total: int) -> None:
                progress.update(done, total)
                progress.raise_if_interrupted()

            source = DataSource(folder_data.encode_all(batch_size=ENCODE_CHUNK, progress=encoded), description, len(records))
        widths = {c.shape[-1] for c in source.data.contexts}
        if widths != {ctx_dim}:
            raise _fail(
                f"the text features are {sorted(widths)} wide but this HDM model reads {ctx_dim}-wide ones: encode with HDM's "
                "Qwen3-0.6B (the CLIP of HDM Checkpoint Loader, HDM Text Encode)"
            )
        check_dataset_size(source.data, batch_size)
        return source

    # -- run ----------------------------------------------------------------------------------
    @classmethod
    def execute(cls, model, dataset_folder, resolution, crop, missing_captions, bracket_mode, algorithm, *, rank=None,
              alpha=None, lokr_factor=None, target, exclude, steps, batch_size, learning_rate, scheduler, warmup_steps, tread_rate, seed,
              save_name, save_every, gradient_checkpointing, precision, clip=None, vae=None, images=None, captions="",
              latent=None, conditioning=None, preview_every=0, **_unknown) -> io.NodeOutput:  # fmt: skip
        # (with accept_all_inputs an input this node does not know arrives too; ignored, as ComfyUI does elsewhere)
        try:
            algorithm, rank, alpha, lokr_factor = algorithm_settings(algorithm, rank=rank, alpha=alpha, lokr_factor=lokr_factor)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        hidden = getattr(cls, "hidden", None)
        unique_id = getattr(hidden, "unique_id", None) if hidden is not None else None
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
            source = cls.dataset(
                model, int(dm.config.ctx_dim), dataset_folder=dataset_folder, images=images, captions=captions,
                latent=latent, conditioning=conditioning, clip=clip, vae=vae, resolution=resolution, crop=crop,
                missing_captions=missing_captions, bracket_mode=bracket_mode, seed=seed, batch_size=int(batch_size),
                progress=progress,
            )  # fmt: skip
        except DatasetError as exc:
            raise _fail(str(exc)) from exc
        progress.raise_if_interrupted()

        root, folder, stem = output_target(save_name)
        config = dataclasses.replace(base_cfg, output_dir=str(folder), output_name=stem, sample_every=int(preview_every or 0))
        metadata: dict[str, Any] = {
            "ss_num_train_images": source.images,
            "hdm_dataset": source.description,
            "hdm_trained_in": f"ComfyUI ({NODE})",
        }
        if latent is None:
            metadata["ss_resolution"] = f"({int(resolution)}, {int(resolution)})"
        progress.text("reading the model's weights", force=True)
        try:
            weights = effective_weights(model)
        except Exception as exc:
            raise _fail(f"cannot read the MODEL's weights for training ({type(exc).__name__}: {exc})") from exc
        mm.free_memory(1e30, device)  # training needs the device; the next prompt reloads what it uses
        xut = None
        try:
            with torch.inference_mode(False):
                try:
                    xut = load_xut(weights, dtype=torch.float32, device=device)
                except CheckpointError as exc:
                    raise _fail(f"cannot build the training copy of the model: {exc}") from exc
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
                    raise _fail(str(exc)) from exc
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
