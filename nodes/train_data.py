"""HDM Train LyCORIS's training data: where it comes from, its inputs, and encoding it once.

Three sources, exactly one per run: a kohya-style **folder** (images + same-name ``.txt``
captions), an **IMAGE** batch with captions in a text box, or ready-made **latents** with their
conditioning. Two layouts of their inputs, chosen by the host (``v3.DYNAMIC_INPUTS``):

* **flat** (ComfyUI without DynamicCombo, e.g. 0.3.64): ``dataset_folder``, ``resolution``,
  ``crop``, ``missing_captions``, ``bracket_mode`` first among the widgets, and the optional
  ``images``, ``captions``, ``latent``, ``conditioning`` after the CLIP and VAE sockets, exactly
  as every release so far saved them; the source is whichever one is set.
* **dynamic** (v0.33): one optional DynamicCombo ``data_source`` (after the CLIP and VAE sockets)
  whose options carry only their own inputs (``SOURCE_INPUTS``). It is optional, and the node
  accepts all inputs, so an API prompt saved with the flat names still validates and trains:
  :func:`data_settings` reads either layout. UI workflows saved flat are rewritten into this
  layout on load by web/hdm_dynamic_combo.js.

Encoding goes through ComfyUI's own objects (the VAE's ``encode``, HDM Text Encode's code on the
CLIP), so the adapter learns from exactly the inputs inference produces; it happens before
training so ComfyUI never swaps the encoders in and out of the GPU under the model being trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import folder_paths

from ..hdm_core.latents import LATENT_CHANNELS
from ..hdm_core.train import BucketConfig, CaptionConfig, ImageFolderData, LatentData, scan_image_folder
from ..hdm_core.train.batching import check_dataset_size
from ..hdm_core.train.buckets import CROP_MODES
from ..hdm_core.train.data import image_records
from .conditioning import BRACKET_MODES, encode_prompt
from .train_errors import NODE, fail
from .v3 import ADVANCED, DYNAMIC_INPUTS, dynamic_choice, io

__all__ = ["DATA_DEFAULTS", "SOURCE_INPUTS", "DataSource", "build_dataset", "check_dataset_folder", "data_inputs_head",
           "data_inputs_tail", "data_settings", "resolve_dataset_folder"]  # fmt: skip

MISSING_CAPTIONS = ["error", "empty"]
#: Images per VAE call while encoding the dataset.
ENCODE_CHUNK = 4
#: The inputs of each source (flat names, in the order the dynamic layout shows them: ComfyUI
#: puts required inputs first, so the optional ``captions`` box is last).
SOURCE_INPUTS: dict[str, tuple[str, ...]] = {
    "folder": ("dataset_folder", "resolution", "crop", "missing_captions", "bracket_mode"),
    "images": ("images", "resolution", "crop", "missing_captions", "bracket_mode", "captions"),
    "latent": ("latent", "conditioning"),
}
#: The widgets' defaults, also what a prompt without the input gets.
DATA_DEFAULTS: dict[str, Any] = {
    "dataset_folder": "", "resolution": 1024, "crop": "bucket", "missing_captions": "error", "bracket_mode": "danbooru",
    "images": None, "captions": "", "latent": None, "conditioning": None,
}  # fmt: skip
_FLAT_HEAD = SOURCE_INPUTS["folder"]
_FLAT_TAIL = ("images", "captions", "latent", "conditioning")
_SOURCE_TOOLTIP = ("Where the training images come from: a dataset folder (images with same-name .txt captions), an IMAGE "
                   "batch with captions, or latents (VAE Encode with the EQ-SDXL-VAE) with their conditioning. "
                   "Shows only the chosen source's inputs.")  # fmt: skip


def _input(name: str, *, nested: bool) -> io.Input:
    """One data input. Flat: as every release declared it. Nested: inside ``data_source`` (``captions`` optional)."""
    optional = {"optional": True} if (name in _FLAT_TAIL and not nested) or name == "captions" else {}
    if name == "dataset_folder":
        return io.String.Input("dataset_folder", default=DATA_DEFAULTS["dataset_folder"], tooltip="A kohya-style dataset folder: images with same-name .txt captions; sub-folders named N_name repeat their images N times. Absolute, or relative to ComfyUI's input folder." + ("" if nested else " Leave empty when training from 'images' or 'latent'."))  # fmt: skip
    if name == "resolution":
        return io.Int.Input("resolution", default=DATA_DEFAULTS["resolution"], min=64, max=4096, step=16, tooltip="Training resolution in pixels (images are resized to about resolution x resolution; folder and IMAGE data).")  # fmt: skip
    if name == "crop":
        return io.Combo.Input("crop", **ADVANCED, options=list(CROP_MODES), default=DATA_DEFAULTS["crop"], tooltip="bucket: aspect-ratio buckets in 16-px steps (each image keeps its shape). square: HDM's shifted square crop (short side = resolution, a random square along the long side). Either way the position map tells the model where the crop sits.")  # fmt: skip
    if name == "missing_captions":
        return io.Combo.Input("missing_captions", **ADVANCED, options=MISSING_CAPTIONS, default=DATA_DEFAULTS["missing_captions"], tooltip="What to do with images without a caption: 'error' stops with a list of them; 'empty' trains them with an empty caption (HDM's unconditional input).")  # fmt: skip
    if name == "bracket_mode":
        return io.Combo.Input("bracket_mode", **ADVANCED, options=BRACKET_MODES, default=DATA_DEFAULTS["bracket_mode"], tooltip="How captions are encoded, as in HDM Text Encode: danbooru keeps brackets in tags such as 'izuna (blue archive)' literal; comfy reads '(x)' as a weight. Use what you will use at inference.")  # fmt: skip
    if name == "images":
        return io.Image.Input("images", **optional, tooltip="Train on this IMAGE batch" + (" (with 'captions')." if nested else " instead of a folder (with 'captions')."))  # fmt: skip
    if name == "captions":
        return io.String.Input("captions", **optional, multiline=True, default=DATA_DEFAULTS["captions"], tooltip="Captions of the 'images' batch: one line per image, or a single line for all images.")  # fmt: skip
    if name == "latent":
        return io.Latent.Input("latent", **optional, tooltip="Train on ready-made latents (VAE Encode with the EQ-SDXL-VAE), with 'conditioning'; no CLIP or VAE needed." if nested else "Train on ready-made latents instead (VAE Encode with the EQ-SDXL-VAE), with 'conditioning'; no CLIP or VAE needed.")  # fmt: skip
    if name == "conditioning":
        return io.Conditioning.Input("conditioning", **optional, tooltip="Conditioning for 'latent' (HDM Text Encode): one prompt for all latents, or one per latent in order (e.g. Conditioning Combine).")  # fmt: skip
    raise KeyError(name)


def data_inputs_head() -> list[io.Input]:
    """The data widgets that lead the node's widgets in the flat layout (none in the dynamic one)."""
    return [] if DYNAMIC_INPUTS else [_input(n, nested=False) for n in _FLAT_HEAD]


def data_inputs_tail() -> list[io.Input]:
    """After the CLIP and VAE sockets: the flat optional sources, or the ``data_source`` DynamicCombo."""
    if not DYNAMIC_INPUTS:
        return [_input(n, nested=False) for n in _FLAT_TAIL]
    options = [io.DynamicCombo.Option(key, [_input(n, nested=True) for n in names]) for key, names in SOURCE_INPUTS.items()]
    return [io.DynamicCombo.Input("data_source", optional=True, options=options, tooltip=_SOURCE_TOOLTIP)]


def data_settings(data_source: Any = None, **flat: Any) -> dict[str, Any]:
    """Every data input by its flat name, from either layout (``v3.dynamic_choice``).

    The chosen ``data_source`` itself is not returned: which source runs is decided by what is
    set (a folder, an IMAGE, a LATENT), the same way for both layouts, so a source chosen with
    an empty folder says "no training data" and two sources set say so (:func:`build_dataset`).
    """
    return dynamic_choice("data_source", data_source, flat, DATA_DEFAULTS)[1]


# ----------------------------------------------------------------------------- checks
def resolve_dataset_folder(text: str) -> Path:
    """An absolute folder, or one relative to ComfyUI's input folder."""
    path = Path(os.path.expanduser(text.strip().strip('"').strip("'")))
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    return path


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


# ----------------------------------------------------------------------------- encoding
def split_captions(text: str | None, count: int, missing: str) -> list[str]:
    """One caption per image from a text box: one line per image, or one line for all."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        if missing == "empty":
            return [""] * count
        raise fail(
            f"the images have no captions: write one caption per line in 'captions' ({count} lines), or a single line "
            "for all images (or set missing_captions to 'empty' to train without captions)"
        )
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise fail(f"'captions' has {len(lines)} lines for {count} images; write one line per image, or a single line for all")
    return lines


def images_to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise fail(f"'images' must be an IMAGE batch [B, H, W, 3], got shape {list(images.shape)}")
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
    from_latents: bool = False


def latent_dataset(model, latent: dict, conditioning: list) -> DataSource:
    """A LATENT (VAE space, e.g. from VAE Encode) + its conditioning: one context for all or one per latent."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None or not torch.is_tensor(samples) or getattr(samples, "is_nested", False):
        raise fail("'latent' must be an image LATENT (e.g. from VAE Encode with the EQ-SDXL-VAE)")
    if samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        raise fail(
            f"'latent' must hold HDM image latents [B, {LATENT_CHANNELS}, h, w] (VAE Encode with the EQ-SDXL-VAE), "
            f"got shape {list(samples.shape)}"
        )
    if not conditioning:
        raise fail("'latent' needs 'conditioning' (the captions encoded with HDM Text Encode)")
    rows = [row for entry in conditioning for row in entry[0]]
    n = samples.shape[0]
    if len(rows) == 1:
        rows = rows * n
    elif len(rows) != n:
        raise fail(f"'conditioning' holds {len(rows)} prompts for {n} latents; give one for all latents or one per latent (in order)")
    z = model.model.process_latent_in(samples.detach().float().cpu())
    return DataSource(LatentData(list(z), rows), f"LATENT ({n} latents)", n, from_latents=True)


def build_dataset(model, ctx_dim: int, data: dict[str, Any], *, clip, vae, seed: int, batch_size: int, progress) -> DataSource:
    """The training data from the one source set in ``data`` (:func:`data_settings`), encoded once.

    ``progress`` is the node's Progress (stages, text, interrupt).
    """
    dataset_folder, images, latent = data["dataset_folder"], data["images"], data["latent"]
    folder_given = isinstance(dataset_folder, str) and dataset_folder.strip() != ""
    given = [name for name, on in (("dataset_folder", folder_given), ("images", images is not None), ("latent", latent is not None)) if on]
    if not given:
        raise fail(
            "no training data: set dataset_folder (images with same-name .txt captions), or connect 'images' "
            "(with 'captions'), or 'latent' with 'conditioning'" + (" (choose the source in data_source)" if DYNAMIC_INPUTS else "")
        )
    if len(given) > 1:
        raise fail(f"several data sources are set ({', '.join(given)}); use exactly one (clear dataset_folder or disconnect the others)")
    missing_captions = data["missing_captions"]
    if missing_captions not in MISSING_CAPTIONS:
        raise fail(f"missing_captions must be one of {', '.join(MISSING_CAPTIONS)}, got '{missing_captions}'")

    if latent is not None:
        source = latent_dataset(model, latent, data["conditioning"])
    else:
        if clip is None or vae is None:
            missing = " and ".join(n for n, v in (("CLIP", clip), ("VAE", vae)) if v is None)
            raise fail(
                f"connect the {missing} (HDM Checkpoint Loader's outputs) to encode the dataset, or train from "
                "'latent' + 'conditioning' instead"
            )
        channels = getattr(vae, "latent_channels", LATENT_CHANNELS)
        if channels != LATENT_CHANNELS:
            raise fail(f"the VAE makes {channels}-channel latents; HDM needs the EQ-SDXL-VAE (4 channels) from HDM Checkpoint Loader")
        try:
            buckets = BucketConfig(mode=data["crop"], resolution=int(data["resolution"]))
        except ValueError as exc:
            raise fail(str(exc)) from exc
        if folder_given:
            root = resolve_dataset_folder(dataset_folder)
            records = scan_image_folder(root, missing_captions=missing_captions)
            description = f"folder {root.name}"
        else:
            pil = images_to_pil(images)
            records = image_records(pil, split_captions(data["captions"], len(pil), missing_captions))
            description = f"IMAGE batch ({len(pil)} images)"
        folder_data = ImageFolderData(
            records, image_encoder=ComfyImageEncoder(vae), text_encoder=ComfyTextEncoder(clip, data["bracket_mode"]),
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
        raise fail(
            f"the text features are {sorted(widths)} wide but this HDM model reads {ctx_dim}-wide ones: encode with HDM's "
            "Qwen3-0.6B (the CLIP of HDM Checkpoint Loader, HDM Text Encode)"
        )
    check_dataset_size(source.data, batch_size)
    return source
