"""Loading HDM files into ComfyUI's MODEL / CLIP / VAE objects, and the loader nodes.

ComfyUI's checkpoint detection does not know HDM and the pack patches nothing in ComfyUI,
so these functions build the objects the way ``comfy.sd.load_state_dict_guess_config``
does (dtype choice, manual cast, initial device, model patcher, VAE, CLIP), with HDM's own
checks first: every tensor of the diffusion model and text encoder is accounted for, and
each problem is reported with what to do about it. The loaders also register
``cached_patcher_init`` factories, which ComfyUI (v0.33+) uses to rebuild a model for deep
clones (LoRA training, multi-GPU).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

import comfy.diffusers_convert
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths

from ..hdm_core.checkpoint import (
    OPTIONAL_KEYS,
    CheckpointError,
    check_weight_file,
    describe_state_dict,
    find_xut_prefix,
    infer_config,
    key_diff,
)
from ..hdm_core.latents import LATENT_CHANNELS, LATENTS_MEAN, LATENTS_STD
from .model import HDMConfig, expected_unet_keys
from .text_encoder import QWEN3_HELP, TextEncoderError, clip_target, extract_text_encoder, looks_like_other_llm
from .v3 import check_options, io, schema

log = logging.getLogger(__name__)

VAE_PREFIX = "vae."
#: Top-level buffers of HDM trainer checkpoints (the latent statistics), checked then dropped.
TRAINER_BUFFERS = ("vae_mean", "vae_std")
FROM_CHECKPOINT = "from checkpoint"


class HDMLoadError(RuntimeError):
    """A file the HDM loaders cannot use; the message says why and what to do."""


@dataclass
class LoadReport:
    """What a load took from a file: missing/unexpected keys per part (all empty for a good file)."""

    model_missing: list[str] = field(default_factory=list)
    model_unexpected: list[str] = field(default_factory=list)
    vae_missing: list[str] = field(default_factory=list)
    vae_unexpected: list[str] = field(default_factory=list)
    te_missing: list[str] = field(default_factory=list)
    te_unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items() if v and k != "ignored"}


# ----------------------------------------------------------------------------- reading files
def _short(path: str | os.PathLike) -> str:
    return os.path.basename(str(path))


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A state dict and its metadata via ComfyUI's reader, after HDM's file-format checks."""
    path = str(path)
    if not os.path.isfile(path):
        raise HDMLoadError(f"{path}: no such file")
    try:
        check_weight_file(path)  # HDM's one format probe, whatever the file's name
    except CheckpointError as exc:
        raise HDMLoadError(str(exc)) from exc
    try:
        sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as exc:  # any reader error means the same thing to the user
        raise HDMLoadError(
            f"{path}: cannot read this file ({type(exc).__name__}: {exc}). It is damaged or not a model file; download it again."
        ) from exc
    return sd, metadata


def read_text_encoder_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Like :func:`read_file`, but a shard of a sharded Qwen3 download brings its siblings."""
    path = Path(path)
    index = path.parent / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, KeyError, ValueError) as exc:
            raise HDMLoadError(f"{index}: not a valid shard index ({exc})") from exc
        shards = sorted(set(weight_map.values()))
        if path.name in shards:
            missing = [s for s in shards if not (path.parent / s).is_file()]
            if missing:
                raise HDMLoadError(f"{path.parent}: shard files listed in model.safetensors.index.json are missing: {', '.join(missing)}")
            sd: dict[str, torch.Tensor] = {}
            for s in shards:
                sd.update(read_file(path.parent / s)[0])
            return sd, None
    return read_file(path)


# ----------------------------------------------------------------------------- model
def _split(sd: Mapping[str, torch.Tensor], xut_prefix: str, te_prefix: str | None) -> dict[str, str]:
    """Short XUT key → full key, leaving out what belongs to the VAE, text encoder or trainer."""
    out = {}
    for k in sd:
        if not k.startswith(xut_prefix):
            continue
        if xut_prefix == "" and (k.startswith(VAE_PREFIX) or k in TRAINER_BUFFERS or (te_prefix is not None and k.startswith(te_prefix))):
            continue
        out[k[len(xut_prefix):]] = k
    return out


def _check_trainer_buffers(sd: Mapping[str, torch.Tensor], what: str) -> list[str]:
    found = [k for k in TRAINER_BUFFERS if k in sd]
    for key, ref in (("vae_mean", LATENTS_MEAN), ("vae_std", LATENTS_STD)):
        if key in sd:
            got = sd[key].float().flatten()
            if got.numel() != LATENT_CHANNELS or not torch.allclose(got, torch.tensor(ref), rtol=1e-2, atol=1e-2):
                log.warning("%s: its %s %s differs from EQ-SDXL-VAE's %s; HDM's latent format uses the latter", what, key, got.tolist(), list(ref))
    return found


def _patcher_class(disable_dynamic: bool):
    if disable_dynamic:
        return comfy.model_patcher.ModelPatcher
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def _is_dynamic(patcher) -> bool:
    fn = getattr(patcher, "is_dynamic", None)
    return bool(fn()) if fn is not None else False


def build_model(sd: dict[str, torch.Tensor], what: str, report: LoadReport, model_options: dict | None = None, disable_dynamic: bool = False, te_prefix: str | None = None):
    """The HDM ``ModelPatcher`` from a state dict holding an XUT under any known prefix."""
    model_options = model_options or {}
    prefix = find_xut_prefix(sd.keys())
    if prefix is None:
        raise HDMLoadError(
            f"{what} is not an HDM checkpoint: {describe_state_dict(list(sd.keys()))}. HDM Checkpoint Loader needs an HDM "
            "(XUT) model file such as hdm-xut-340M-1024px-note.safetensors in ComfyUI/models/checkpoints."
        )
    names = _split(sd, prefix, te_prefix)
    shapes = {short: list(sd[full].shape) for short, full in names.items()}
    try:
        xut_config = infer_config(shapes)
    except CheckpointError as exc:
        raise HDMLoadError(f"{what}: {exc}") from exc
    expected = expected_unet_keys(xut_config)
    problems = key_diff(expected, shapes, OPTIONAL_KEYS)
    if problems:
        raise HDMLoadError(f"{what}: the HDM diffusion-model weights do not fit the XUT architecture they describe: {problems}. The file is damaged or an unsupported XUT variant.")
    report.model_missing = sorted(k for k in expected if k not in shapes and k not in OPTIONAL_KEYS)
    report.model_unexpected = sorted(k for k in shapes if k not in expected)

    unet_sd = {short: sd[full] for short, full in names.items()}
    model_config = HDMConfig(xut_config)
    parameters = comfy.utils.calculate_parameters(unet_sd)
    weight_dtype = comfy.utils.weight_dtype(unet_sd)
    load_device = model_options.get("load_device", mm.get_torch_device())
    if model_options.get("custom_operations") is not None:
        model_config.custom_operations = model_options["custom_operations"]
    unet_dtype = model_options.get("dtype", model_options.get("weight_dtype", None))
    if unet_dtype is None:
        unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes), weight_dtype=weight_dtype)
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype)
    if model_options.get("fp8_optimizations", False):
        model_config.optimizations["fp8"] = True

    initial_device = mm.unet_inital_load_device(parameters, unet_dtype)
    model = model_config.get_model(unet_sd, "", device=initial_device)
    offload_device = model_options.get("offload_device", mm.unet_offload_device())
    patcher = _patcher_class(disable_dynamic)(model, load_device=load_device, offload_device=offload_device)
    if "assign" in inspect.signature(model.load_model_weights).parameters:
        model.load_model_weights(unet_sd, "", assign=_is_dynamic(patcher))
    else:
        model.load_model_weights(unet_sd, "")
    if initial_device != torch.device("cpu"):
        mm.load_models_gpu([patcher], force_full_load=True)
    return patcher


# ----------------------------------------------------------------------------- VAE
class MissingVAE(comfy.sd.VAE):
    """Stands in for the VAE of a checkpoint that holds none, with a message that says what to do."""

    def __init__(self, what: str) -> None:
        super().__init__(sd={})
        self.hdm_what = what

    def throw_exception_if_invalid(self):
        raise RuntimeError(
            f"{self.hdm_what} holds no VAE. Put the EQ-SDXL-VAE file in ComfyUI/models/vae and load it with the stock "
            "Load VAE node, then connect that VAE instead."
        )


def build_vae(sd: Mapping[str, torch.Tensor], what: str, report: LoadReport, metadata=None, device=None):
    """EQ-SDXL-VAE from the ``vae.`` keys (diffusers or LDM layout), or a :class:`MissingVAE`."""
    vae_sd = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if not vae_sd:
        return MissingVAE(what)
    conv_in = vae_sd.get("decoder.conv_in.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise HDMLoadError(f"{what}: its 'vae.' tensors are not an SDXL-style VAE (no 4-D decoder.conv_in.weight); the file is damaged.")
    if conv_in.shape[1] != LATENT_CHANNELS:
        raise HDMLoadError(f"{what}: its VAE has {conv_in.shape[1]} latent channels, HDM needs EQ-SDXL-VAE (4 channels).")
    converted = vae_sd
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in vae_sd:
        converted = comfy.diffusers_convert.convert_vae_state_dict(dict(vae_sd))
    kwargs: dict[str, Any] = {"sd": vae_sd, "metadata": metadata}
    if device is not None:
        kwargs["device"] = device
    vae = comfy.sd.VAE(**kwargs)
    if getattr(vae, "first_stage_model", None) is None:
        raise HDMLoadError(f"{what}: ComfyUI could not build a VAE from its 'vae.' tensors; the file is damaged.")
    expected = set(vae.first_stage_model.state_dict().keys())
    report.vae_missing = sorted(expected - set(converted))
    report.vae_unexpected = sorted(set(converted) - expected)
    if report.vae_missing:
        raise HDMLoadError(f"{what}: its VAE is incomplete ({len(report.vae_missing)} tensors missing, e.g. {', '.join(report.vae_missing[:4])}); the file is damaged.")
    return vae


# ----------------------------------------------------------------------------- text encoder
def build_clip(te, what: str, report: LoadReport, embedding_directory=None, te_model_options: dict | None = None, disable_dynamic: bool = False, ctx_dim: int | None = None):
    """ComfyUI ``CLIP`` holding HDM's Qwen3 from :func:`text_encoder.extract_text_encoder` output."""
    te_model_options = te_model_options or {}
    if ctx_dim is not None and te.config.hidden_size != ctx_dim:
        raise HDMLoadError(
            f"{what}: this Qwen3 text encoder has hidden size {te.config.hidden_size}, but the HDM model reads "
            f"{ctx_dim}-dim text features. HDM needs Qwen3-0.6B (hidden size 1024), not a larger Qwen3. {QWEN3_HELP}."
        )
    target = clip_target(te.config)
    parameters = comfy.utils.calculate_parameters(te.state_dict)
    kwargs: dict[str, Any] = {"embedding_directory": embedding_directory, "parameters": parameters, "model_options": te_model_options}
    clip_params = inspect.signature(comfy.sd.CLIP.__init__).parameters
    if "state_dict" in clip_params:
        kwargs["state_dict"] = te.state_dict
    if "disable_dynamic" in clip_params:
        kwargs["disable_dynamic"] = disable_dynamic
    clip = comfy.sd.CLIP(target, **kwargs)
    if "state_dict" not in clip_params:
        clip.load_sd(te.state_dict, full_model=True)
    expected = {k for k in clip.cond_stage_model.state_dict().keys() if not k.endswith(".logit_scale")}
    report.te_missing = sorted(expected - set(te.state_dict))
    report.te_unexpected = sorted(set(te.state_dict) - expected)
    report.ignored += [te.source_prefix + k for k in te.ignored]
    if report.te_missing or report.te_unexpected:
        raise HDMLoadError(f"{what}: the text encoder did not load cleanly (missing {report.te_missing[:4]}, unexpected {report.te_unexpected[:4]}).")
    return clip


def text_encoder_from_file(path: str, report: LoadReport):
    """The Qwen3 weights of a text-encoder file, or a clear error about what the file is instead."""
    what = f"text encoder '{_short(path)}'"
    sd, _ = read_text_encoder_file(path)
    try:
        te = extract_text_encoder(sd, what)
    except TextEncoderError as exc:
        raise HDMLoadError(str(exc)) from exc
    if te is None:
        if find_xut_prefix(sd.keys()) is not None:
            hint = "it is an HDM diffusion-model checkpoint without a text encoder (select it as ckpt_name instead)"
        else:
            hint = looks_like_other_llm(sd.keys()) or describe_state_dict(list(sd.keys()))
        raise HDMLoadError(f"{what} is not a Qwen3 text encoder: {hint}. {QWEN3_HELP}.")
    report.ignored += [k for k in sd if not k.startswith(te.source_prefix)]
    return te


# ----------------------------------------------------------------------------- whole files
def load_hdm_checkpoint(
    ckpt_path: str,
    text_encoder_path: str | None = None,
    output_model: bool = True,
    output_clip: bool = True,
    output_vae: bool = True,
    embedding_directory=None,
    model_options: dict | None = None,
    te_model_options: dict | None = None,
    disable_dynamic: bool = False,
    require_text_encoder: bool = True,
):
    """``(model_patcher, clip, vae, report)`` from an HDM file and an optional text-encoder file.

    The text encoder comes from ``text_encoder_path`` when given, else from the checkpoint's
    ``te.`` keys; with neither, ``clip`` is ``None`` unless ``require_text_encoder`` (then an
    error says where to get Qwen3-0.6B).
    """
    what = f"checkpoint '{_short(ckpt_path)}'"
    report = LoadReport()
    sd, metadata = read_file(ckpt_path)
    te_in_ckpt = None
    try:
        te_in_ckpt = extract_text_encoder(sd, what)
    except TextEncoderError as exc:
        if output_clip and text_encoder_path is None:
            raise HDMLoadError(str(exc)) from exc
    te_prefix = te_in_ckpt.source_prefix if te_in_ckpt is not None else None
    xut_prefix = find_xut_prefix(sd.keys())
    if xut_prefix is None:
        raise HDMLoadError(
            f"{what} is not an HDM checkpoint: {describe_state_dict(list(sd.keys()))}. HDM Checkpoint Loader needs an HDM "
            "(XUT) model file such as hdm-xut-340M-1024px-note.safetensors in ComfyUI/models/checkpoints."
        )
    ctx_dim = list(sd[xut_prefix + "ctx_proj.weight"].shape)[1] if xut_prefix + "ctx_proj.weight" in sd else None
    claimed = set(_split(sd, xut_prefix, te_prefix).values())
    claimed |= {k for k in sd if k.startswith(VAE_PREFIX)}
    claimed |= set(_check_trainer_buffers(sd, what))
    if te_prefix is not None:
        claimed |= {k for k in sd if k.startswith(te_prefix)}
    report.ignored = sorted(set(sd) - claimed)
    if report.ignored:
        log.warning("%s: ignoring %d tensors that belong to no part of HDM (e.g. %s)", what, len(report.ignored), report.ignored[:4])

    te = None
    if output_clip:
        if text_encoder_path is not None:
            te = text_encoder_from_file(text_encoder_path, report)
        elif te_in_ckpt is not None:
            te = te_in_ckpt
        elif require_text_encoder:
            raise HDMLoadError(f"{what} holds no text encoder (released HDM files do not include it). {QWEN3_HELP}.")

    model = clip = vae = None
    if output_vae:
        vae = build_vae(sd, what, report, metadata=metadata, device=model_options.get("load_device") if model_options else None)
    if te is not None:
        clip = build_clip(te, what if text_encoder_path is None else f"text encoder '{_short(text_encoder_path)}'", report, embedding_directory, te_model_options, disable_dynamic, ctx_dim)
    if output_model:
        model = build_model(sd, what, report, model_options, disable_dynamic, te_prefix)
    if report.problems():
        log.warning("%s loaded with key problems: %s", what, report.problems())
    return model, clip, vae, report


def load_hdm_text_encoder(path: str, embedding_directory=None, te_model_options: dict | None = None, disable_dynamic: bool = False):
    """``(clip, report)`` from a standalone Qwen3-0.6B file (HF layout, with or without ``model.``)."""
    report = LoadReport()
    te = text_encoder_from_file(path, report)
    clip = build_clip(te, f"text encoder '{_short(path)}'", report, embedding_directory, te_model_options, disable_dynamic)
    return clip, report


# Factories ComfyUI calls (with disable_dynamic=) to rebuild a patcher: cached_patcher_init.
def reload_model_patcher(ckpt_path, model_options=None, disable_dynamic=False):
    return load_hdm_checkpoint(ckpt_path, output_clip=False, output_vae=False, model_options=model_options, disable_dynamic=disable_dynamic)[0]


def reload_clip_patcher(ckpt_path, text_encoder_path=None, embedding_directory=None, te_model_options=None, disable_dynamic=False):
    clip = load_hdm_checkpoint(
        ckpt_path, text_encoder_path, output_model=False, output_vae=False, embedding_directory=embedding_directory,
        te_model_options=te_model_options, disable_dynamic=disable_dynamic,
    )[1]
    return clip.patcher


def reload_vae_patcher(ckpt_path, disable_dynamic=False):
    return load_hdm_checkpoint(ckpt_path, output_model=False, output_clip=False, disable_dynamic=disable_dynamic)[2].patcher


def reload_text_encoder_patcher(path, embedding_directory=None, te_model_options=None, disable_dynamic=False):
    return load_hdm_text_encoder(path, embedding_directory, te_model_options, disable_dynamic)[0].patcher


# ----------------------------------------------------------------------------- nodes
class MissingTextEncoderError(AttributeError):
    """Raised on any use of a :class:`MissingTextEncoder` (an AttributeError, so ``hasattr`` stays safe)."""


class MissingTextEncoder:
    """The CLIP output of a checkpoint without text encoder when none was selected.

    Loading still succeeds (a workflow may take its CLIP from HDM Text Encoder Loader); the
    first node that uses this CLIP fails with a message saying where to get Qwen3-0.6B.
    """

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_hdm_message", f"{what} holds no text encoder (released HDM files do not include it). {QWEN3_HELP}.")

    def __getattr__(self, name: str):
        raise MissingTextEncoderError(object.__getattribute__(self, "_hdm_message"))


#: weight_dtype choices of HDM Checkpoint Loader: UNETLoader's, plus the dtypes HDM runs in.
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "fp16", "bf16", "fp32"]


def weight_dtype_options(weight_dtype: str) -> dict:
    """``model_options`` for a ``weight_dtype`` choice, as UNETLoader builds them.

    The storage dtype goes to ComfyUI as ``model_options["dtype"]``; ComfyUI's model
    management then picks the compute dtype (``unet_manual_cast``) and its ops cast each
    weight on use (fp8 and, on devices without it, bf16/fp16). "default" lets ComfyUI choose.
    """
    dtypes = {
        "fp8_e4m3fn": torch.float8_e4m3fn,
        "fp8_e4m3fn_fast": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
    }
    if weight_dtype == "default":
        return {}
    if weight_dtype not in dtypes:
        raise HDMLoadError(f"HDM Checkpoint Loader: weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got '{weight_dtype}'")
    options: dict[str, Any] = {"dtype": dtypes[weight_dtype]}
    if weight_dtype == "fp8_e4m3fn_fast":
        options["fp8_optimizations"] = True
    return options


def _check_listed(folder: str, name: str, what: str, where: str) -> bool | str:
    """``True``, or the message for a file name the folder does not hold (validate_inputs).

    A linked input arrives as ``None`` (its value is known only at run time): not checked here.
    """
    if name is None or name in folder_paths.get_filename_list(folder):
        return True
    return f"{what} '{name}' is not in {where}; put the file there (or pick one of the listed files) and refresh."


class HDMCheckpointLoader(io.ComfyNode):
    """HDM all-in-one file (+ optional separate Qwen3-0.6B file) → MODEL, CLIP, VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMCheckpointLoader",
            display_name="HDM Checkpoint Loader",
            description="Loads an HDM (Home-made Diffusion Model) checkpoint and its Qwen3-0.6B text encoder.",
            search_aliases=["hdm", "home-made diffusion", "anime", "load checkpoint hdm", "xut", "qwen"],
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=folder_paths.get_filename_list("checkpoints"),
                    tooltip="The HDM checkpoint (e.g. hdm-xut-340M-1024px-note.safetensors) in ComfyUI/models/checkpoints. It holds the XUT diffusion model and the EQ-SDXL-VAE.",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=[FROM_CHECKPOINT] + folder_paths.get_filename_list("text_encoders"),
                    tooltip="The Qwen3-0.6B text encoder (https://huggingface.co/Qwen/Qwen3-0.6B, model.safetensors) in ComfyUI/models/text_encoders. Released HDM checkpoints do not include it; 'from checkpoint' uses the one inside the checkpoint (trainer checkpoints).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=WEIGHT_DTYPES,
                    default="default",
                    optional=True,
                    tooltip="Storage dtype of the diffusion model's weights, as in Load Diffusion Model: default lets ComfyUI choose; fp8 halves "
                    "the memory of fp16 (weights are cast up for compute; fp8_e4m3fn_fast uses fp8 matmuls on GPUs that have them); "
                    "fp16/bf16/fp32 force that dtype. The text encoder and VAE are not affected.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The HDM diffusion model (XUT), used for denoising latents."),
                io.Clip.Output(tooltip="The Qwen3-0.6B text encoder, used to encode prompts."),
                io.Vae.Output(tooltip="The EQ-SDXL-VAE, used to decode latents to images and encode images to latents."),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name=None, text_encoder=None, weight_dtype=None) -> bool | str:
        listed = _check_listed("checkpoints", ckpt_name, "HDM Checkpoint Loader: checkpoint", "ComfyUI/models/checkpoints")
        if listed is True and text_encoder != FROM_CHECKPOINT:
            listed = _check_listed("text_encoders", text_encoder, "HDM Checkpoint Loader: text encoder", f"ComfyUI/models/text_encoders. {QWEN3_HELP}")
        return listed if listed is not True else check_options(cls, weight_dtype=weight_dtype)

    @classmethod
    def execute(cls, ckpt_name, text_encoder=FROM_CHECKPOINT, weight_dtype="default") -> io.NodeOutput:
        ckpt_path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        te_path = None if text_encoder == FROM_CHECKPOINT else folder_paths.get_full_path_or_raise("text_encoders", text_encoder)
        embedding_directory = folder_paths.get_folder_paths("embeddings")
        model_options = weight_dtype_options(weight_dtype)
        model, clip, vae, _ = load_hdm_checkpoint(
            ckpt_path, te_path, embedding_directory=embedding_directory, model_options=model_options, require_text_encoder=False
        )
        model.cached_patcher_init = (reload_model_patcher, (ckpt_path, model_options or None))
        if clip is None:
            clip = MissingTextEncoder(f"checkpoint '{ckpt_name}'")
        else:
            clip.patcher.cached_patcher_init = (reload_clip_patcher, (ckpt_path, te_path, embedding_directory, None))
        if getattr(vae, "patcher", None) is not None:
            vae.patcher.cached_patcher_init = (reload_vae_patcher, (ckpt_path,))
        return io.NodeOutput(model, clip, vae)


class HDMTextEncoderLoader(io.ComfyNode):
    """A standalone Qwen3-0.6B file → CLIP for HDM."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMTextEncoderLoader",
            display_name="HDM Text Encoder Loader",
            description="Loads HDM's text encoder (Qwen3-0.6B) from ComfyUI/models/text_encoders, without any download.",
            search_aliases=["qwen", "qwen3", "load clip hdm", "text encoder hdm"],
            inputs=[
                io.Combo.Input(
                    "text_encoder",
                    options=folder_paths.get_filename_list("text_encoders"),
                    tooltip="Qwen3-0.6B (https://huggingface.co/Qwen/Qwen3-0.6B, model.safetensors) in ComfyUI/models/text_encoders: the Hugging Face file as is (with or without the 'model.' prefix); pick any shard of a sharded download.",
                ),
            ],
            outputs=[io.Clip.Output(tooltip="The Qwen3-0.6B text encoder for HDM Text Encode or CLIP Text Encode.")],
        )

    @classmethod
    def validate_inputs(cls, text_encoder=None) -> bool | str:
        return _check_listed("text_encoders", text_encoder, "HDM Text Encoder Loader: text encoder", f"ComfyUI/models/text_encoders. {QWEN3_HELP}")

    @classmethod
    def execute(cls, text_encoder) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("text_encoders", text_encoder)
        embedding_directory = folder_paths.get_folder_paths("embeddings")
        clip, _ = load_hdm_text_encoder(path, embedding_directory)
        clip.patcher.cached_patcher_init = (reload_text_encoder_patcher, (path, embedding_directory, None))
        return io.NodeOutput(clip)
