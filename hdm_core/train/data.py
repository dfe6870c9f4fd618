"""Training data: kohya-style image folders or precomputed latents, plus an on-disk cache.

The engine only needs batches of *model-space* latents, text contexts, position maps and
aspect values (:class:`Batch`). Where they come from is pluggable:

* :class:`ImageFolderData` reads a kohya-style folder (``foo.png`` + ``foo.txt``; sub-folders
  named ``N_name`` repeat their images N times), augments captions, buckets and crops the
  images, and turns pixels and captions into tensors with two callables supplied by the
  caller: ``encode_images(pixels [B, 3, H, W] in [-1, 1]) → VAE latents [B, 4, H/8, W/8]``
  (normalised here with :mod:`hdm_core.latents`) and ``encode_text(list[str]) →
  [B, T, D]`` tensor or list of ``[T_i, D]``. Both results can be cached on disk. An image
  encoder whose ``stochastic`` attribute is true (VAE posterior sampling, as HDM trained)
  is called as ``encode_images(pixels, seeds=[...])`` with one seed per image, so its draws
  are reproducible like every other random choice here.
* :class:`LatentData` takes latents and contexts that are already computed (e.g. a
  ComfyUI LATENT and its conditioning). :meth:`ImageFolderData.encode_all` turns an image
  dataset into one (every image and caption encoded once), so training can run with the
  encoders unloaded — what the ComfyUI node does. Records may also hold in-memory images
  (:func:`image_records`, e.g. a ComfyUI IMAGE batch) instead of files.

Randomness (crop offsets, caption augmentation) comes from a ``random.Random`` the engine
derives from the sample's key, so it is reproducible and identical across data-parallel
ranks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from ..checkpoint import read_state_dict, save_safetensors
from ..fileformat import sweep_stale_temporaries
from ..latents import LATENT_CHANNELS, VAE_SCALE, normalize
from ..positions import axial_grid
from .buckets import BucketConfig, CropPlan, crop_positions, make_buckets, plan_crop, target_size
from .captions import CaptionConfig, clean_caption, process_caption

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
TextEncoder = Callable[[list[str]], "torch.Tensor | Sequence[torch.Tensor]"]

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset that cannot be trained on, with a message naming the file and the fix."""


# --------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One (micro-)batch, all on CPU until the engine moves it."""

    latents: torch.Tensor  # [B, 4, h, w] model space (normalised)
    ctx: torch.Tensor  # [B, T, D]
    ctx_mask: torch.Tensor | None  # [B, T] bool (True = real token) or None when all T are equal
    pos_map: torch.Tensor  # [B, h·w, 2] latent-resolution positions
    addon_info: torch.Tensor  # [B, 1] log(width / height)
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.latents.shape[0]


def collate_contexts(contexts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack ``[T_i, D]`` contexts; unequal lengths are zero-padded with a key mask.

    XUT masks padded text keys, which makes a padded sample compute exactly what it would
    alone (its text tokens share self-attention with the image, so padding without a mask
    would change the result).
    """
    dims = {c.shape[-1] for c in contexts}
    if len(dims) != 1:
        raise DatasetError(f"text contexts have different widths {sorted(dims)}; use one text encoder for all samples")
    lengths = [c.shape[0] for c in contexts]
    if len(set(lengths)) == 1:
        return torch.stack(list(contexts)), None
    longest = max(lengths)
    ctx = contexts[0].new_zeros(len(contexts), longest, dims.pop())
    mask = torch.zeros(len(contexts), longest, dtype=torch.bool)
    for i, c in enumerate(contexts):
        ctx[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = True
    return ctx, mask


def split_text_output(out: torch.Tensor | Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """A text encoder's result as ``n`` tensors ``[T_i, D]``."""
    if torch.is_tensor(out):
        if out.ndim != 3 or out.shape[0] != n:
            raise DatasetError(f"the text encoder returned shape {list(out.shape)}; expected [{n}, tokens, width]")
        return [o for o in out]
    out = list(out)
    if len(out) != n or any(o.ndim != 2 for o in out):
        raise DatasetError(f"the text encoder must return {n} tensors [tokens, width] (or one [{n}, tokens, width])")
    return out


class TrainingData(Protocol):
    """What the engine needs from a dataset."""

    def __len__(self) -> int: ...

    def repeats(self, index: int) -> int: ...

    def bucket(self, index: int) -> tuple[int, int]:
        """Latent ``(h, w)`` of the item; a batch only holds items of one bucket."""
        ...

    def batch(self, indices: Sequence[int], rngs: Sequence[random.Random]) -> Batch: ...


# --------------------------------------------------------------------------- disk cache
class DiskCache:
    """Content-addressed tensor cache: ``root/<kind>/<aa>/<sha256>.safetensors``, atomic writes.

    Keys are hashes of everything that determines the tensor (encoder identity, source
    file size and mtime, crop, caption text), so a stale entry is never reused. Each entry
    also records its kind, key and a SHA-256 of the tensor bytes: a truncated, foreign or
    altered file at an entry's path is detected, deleted and recomputed, never used as
    training data. A failed write (disk full, read-only folder) turns caching off with one
    warning; training goes on computing the tensors instead.
    """

    VERSION = "1"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.writable = True
        self.discarded = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create the cache folder {self.root}: {exc}") from exc
        sweep_stale_temporaries(self.root, recursive=True)  # entries a killed run left half-written

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    @staticmethod
    def digest(value: torch.Tensor) -> str:
        """SHA-256 of the tensor's bytes (its dtype and shape are in the file's header)."""
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()  # (the buffer itself, no copy)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> torch.Tensor | None:
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            sd = read_state_dict(path)  # the format probe: truncated or foreign files fail here
            meta = getattr(sd, "metadata", None) or {}
            if set(sd) != {"value"} or meta.get("hdm_cache") != self.VERSION or meta.get("kind") != kind or meta.get("key") != key:
                raise ValueError("not an entry of this cache (foreign file or another entry's data)")
            value = sd["value"].clone()
            if self.digest(value) != meta.get("sha256"):
                raise ValueError("its data does not match its checksum")
        except Exception as exc:  # a damaged entry is recomputed, never trusted
            log.warning("discarding damaged cache entry %s (%s); it is computed again", path, exc)
            self.discarded += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return value

    def put(self, kind: str, key: str, value: torch.Tensor) -> None:
        if not self.writable:
            return
        value = value.detach().to("cpu").contiguous()
        meta = {"hdm_cache": self.VERSION, "kind": kind, "key": key, "sha256": self.digest(value)}
        try:
            save_safetensors({"value": value}, self._path(kind, key), meta)
        except OSError as exc:  # SaveError names the path and the cause
            self.writable = False
            log.warning("%s. Caching is off for the rest of this run: tensors are computed instead of cached", exc)


# --------------------------------------------------------------------------- image folders
@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset: its file (or, with ``image`` set, an in-memory PIL image whose
    ``path`` only names it in messages), caption, repeat count and size in pixels."""

    path: Path
    caption: str
    repeats: int
    width: int
    height: int
    image: Any = field(default=None, compare=False, repr=False)


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: caption is not UTF-8 text ({exc}); re-save it as UTF-8") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read caption ({exc})") from exc


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read this image ({exc}); remove it or replace it with a valid file") from exc
    return size


def scan_image_folder(
    root: str | os.PathLike,
    *,
    caption_extension: str = ".txt",
    missing_captions: str = "error",
) -> list[ImageRecord]:
    """Images, captions and repeat counts of a kohya-style folder.

    Images directly in ``root`` repeat once; sub-folders named ``N_name`` repeat theirs N
    times; other sub-folders are ignored (and named in the log). ``missing_captions``:
    ``"error"`` (default) or ``"empty"`` (an image without its ``.txt`` trains with an
    empty caption, as HDM's own dataset does).
    """
    if missing_captions not in ("error", "empty"):
        raise ValueError(f"missing_captions must be 'error' or 'empty', got '{missing_captions}'")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; point the dataset at a folder of images and .txt captions")
    folders: list[tuple[Path, int]] = [(root, 1)]
    ignored = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _REPEAT_DIR.match(sub.name)
        if match:
            folders.append((sub, int(match.group(1))))
        elif not sub.name.startswith("."):
            ignored.append(sub.name)
    if ignored:
        log.warning("dataset %s: ignoring sub-folders not named N_name: %s", root, ", ".join(ignored))
    records, missing = [], []
    for folder, repeats in folders:
        if repeats < 1:
            raise DatasetError(f"{folder}: repeat count must be >= 1 (folder names are N_name with N >= 1)")
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            cap_path = path.with_suffix(caption_extension)
            if cap_path.is_file():
                caption = _read_caption(cap_path)
            else:
                missing.append(path)
                caption = ""
            width, height = _image_size(path)
            records.append(ImageRecord(path, caption, repeats, width, height))
    if not records:
        raise DatasetError(
            f"dataset folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), neither directly nor in "
            "N_name sub-folders; put images with same-name .txt captions there"
        )
    if missing and missing_captions == "error":
        shown = ", ".join(p.name for p in missing[:5])
        raise DatasetError(
            f"{len(missing)} of {len(records)} images in {root} have no {caption_extension} caption (e.g. {shown}). "
            f"Add a same-name {caption_extension} file next to each image, or set missing_captions = \"empty\" "
            "to train those images without a caption"
        )
    return records


def image_records(images: Sequence[Any], captions: Sequence[str], *, name: str = "image") -> list[ImageRecord]:
    """Records for in-memory PIL images (one caption each), e.g. a ComfyUI IMAGE batch.

    Their ``path`` is a label (``<image 3>``) for messages; they cannot use the latent cache.
    """
    if len(images) != len(captions):
        raise DatasetError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
    if not images:
        raise DatasetError("no images were given")
    return [
        ImageRecord(Path(f"<{name} {i}>"), caption, 1, img.width, img.height, image=img)
        for i, (img, caption) in enumerate(zip(images, captions))
    ]


def fit_image(img: Any, plan: CropPlan) -> torch.Tensor:
    """A PIL image as RGB pixels ``[3, h, w]`` in [-1, 1]: resized (bicubic) to ``plan.resized``, cropped."""
    from PIL import Image

    img = img.convert("RGB").resize(plan.resized, Image.BICUBIC)
    (cw, ch) = plan.size
    img = img.crop((plan.left, plan.top, plan.left + cw, plan.top + ch))
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(ch, cw, 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


def load_image(path: Path, plan: CropPlan) -> torch.Tensor:
    """An image file as RGB pixels ``[3, h, w]`` in [-1, 1] (see :func:`fit_image`)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return fit_image(img, plan)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot decode this image ({exc}); remove it or replace it with a valid file") from exc


def record_pixels(record: ImageRecord, plan: CropPlan) -> torch.Tensor:
    """The pixels of a record (its in-memory image, else its file) for ``plan``."""
    return fit_image(record.image, plan) if record.image is not None else load_image(record.path, plan)


class ImageFolderData:
    """Images + captions → :class:`Batch`, with optional latent and text caches.

    ``image_encoder`` / ``text_encoder`` may carry a ``cache_id`` attribute (a string that
    changes whenever their output would, e.g. a hash of the weights); caching is only
    allowed for encoders that have one. With a latent cache, each image's crop offset is
    drawn once per image (not per visit), so every visit reuses one cached latent.
    ``normalize_latents`` maps the image encoder's VAE latents to the model's space
    (default :func:`hdm_core.latents.normalize`; ComfyUI passes the model's
    ``latent_format.process_in``).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        image_encoder: ImageEncoder | None,
        text_encoder: TextEncoder | None,
        buckets: BucketConfig = BucketConfig(),
        captions: CaptionConfig = CaptionConfig(),
        cache: DiskCache | None = None,
        cache_latents: bool = False,
        cache_text: bool = False,
        seed: int = 0,
        normalize_latents: Callable[[torch.Tensor], torch.Tensor] = normalize,
    ) -> None:
        if not records:
            raise DatasetError("the dataset is empty")
        self.records = list(records)
        if cache_latents and any(r.image is not None for r in self.records):
            raise DatasetError("in-memory images cannot use the latent cache (it is keyed by file); turn cache_latents off")
        self.normalize_latents = normalize_latents
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.bucket_cfg = buckets
        self.caption_cfg = captions
        self.cache = cache
        self.seed = seed
        if (cache_latents or cache_text) and cache is None:
            raise DatasetError("latent/text caching needs a cache folder")
        self.cache_latents = cache_latents
        self.cache_text = cache_text
        for flag, enc, what in ((cache_latents, image_encoder, "image"), (cache_text, text_encoder, "text")):
            if flag and enc is not None and not getattr(enc, "cache_id", None):
                raise DatasetError(
                    f"the {what} encoder has no cache_id, so cached {what} tensors could not be told apart from "
                    "those of another encoder; give it a cache_id attribute or turn the cache off"
                )
        all_buckets = make_buckets(buckets.resolution, buckets.max_aspect) if buckets.mode == "bucket" else None
        self.sizes = [target_size(r.width, r.height, buckets, all_buckets) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def repeats(self, index: int) -> int:
        return self.records[index].repeats

    def bucket(self, index: int) -> tuple[int, int]:
        w, h = self.sizes[index]
        return h // VAE_SCALE, w // VAE_SCALE

    # -- pieces ---------------------------------------------------------------------------
    def crop_plan(self, index: int, rng: random.Random) -> CropPlan:
        rec = self.records[index]
        if self.cache_latents:  # one crop per image, so the cached latent is reused
            rng = self._fixed_crop_rng(index)
        return plan_crop(rec.width, rec.height, self.sizes[index], self.bucket_cfg, rng)

    def _fixed_crop_rng(self, index: int) -> random.Random:
        """The generator of an image's one crop (latent cache, :meth:`encode_all`)."""
        return random.Random(DiskCache.key("crop", self.seed, index))

    def _latent_key(self, index: int, plan: CropPlan) -> str:
        rec = self.records[index]
        st = rec.path.stat()
        enc_id = getattr(self.image_encoder, "cache_id", None)
        return DiskCache.key("latent", enc_id, str(rec.path.resolve()), st.st_size, st.st_mtime_ns, plan)

    def _encoder_seed(self, index: int, plan: CropPlan, key: str | None, visit_seed: int | None) -> int:
        """Seed of a stochastic encoder's draw for one image.

        Cached latents are drawn once, from the cache key (so a cache hit and a fresh encode
        give the same tensor); otherwise every visit draws anew, from the sample's rng.
        """
        if key is not None:
            return int(key[:15], 16)
        if visit_seed is not None:
            return visit_seed
        return int(DiskCache.key("encoder-seed", self.seed, index, plan)[:15], 16)

    def encode_latents(
        self, indices: Sequence[int], plans: Sequence[CropPlan], seeds: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Model-space latents ``[4, h, w]`` for the given crops (cache first, then encoder).

        ``seeds`` (one per image) feed a stochastic encoder when the latent is not cached.
        """
        out: list[torch.Tensor | None] = [None] * len(indices)
        keys: list[str | None] = [None] * len(indices)
        if self.cache_latents:
            for j, (i, plan) in enumerate(zip(indices, plans)):
                keys[j] = self._latent_key(i, plan)
                out[j] = self.cache.get("latents", keys[j])
        todo = [j for j, v in enumerate(out) if v is None]
        if todo:
            if self.image_encoder is None:
                raise DatasetError(
                    f"{self.records[indices[todo[0]]].path}: no cached latent and no VAE to encode it; "
                    "configure a VAE (image encoder) or pre-fill the latent cache"
                )
            pixels = torch.stack([record_pixels(self.records[indices[j]], plans[j]) for j in todo])
            kwargs = {}
            if getattr(self.image_encoder, "stochastic", False):
                kwargs["seeds"] = [
                    self._encoder_seed(indices[j], plans[j], keys[j], seeds[j] if seeds is not None else None) for j in todo
                ]
            with torch.no_grad():
                lat = self.image_encoder(pixels, **kwargs)
            lat = self.normalize_latents(lat.detach().float().cpu()).float()
            h, w = plans[todo[0]].latent_hw
            if lat.shape != (len(todo), LATENT_CHANNELS, h, w):
                raise DatasetError(
                    f"the image encoder returned latents of shape {list(lat.shape)}; expected "
                    f"[{len(todo)}, {LATENT_CHANNELS}, {h}, {w}] for {h * VAE_SCALE}x{w * VAE_SCALE} px images"
                )
            for k, j in enumerate(todo):
                out[j] = lat[k].clone()
                if self.cache_latents:
                    self.cache.put("latents", keys[j], out[j])
        return out  # type: ignore[return-value]

    def encode_captions(self, captions: Sequence[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(captions)
        enc_id = getattr(self.text_encoder, "cache_id", None)
        keys = [DiskCache.key("text", enc_id, c) for c in captions]
        if self.cache_text:
            out = [self.cache.get("text", k) for k in keys]
        todo = [j for j, v in enumerate(out) if v is None]
        if todo:
            if self.text_encoder is None:
                raise DatasetError(
                    f"no cached text embedding for caption {captions[todo[0]]!r} and no text encoder; "
                    "configure a text encoder or pre-fill the text cache"
                )
            with torch.no_grad():
                enc = split_text_output(self.text_encoder([captions[j] for j in todo]), len(todo))
            for k, j in enumerate(todo):
                out[j] = enc[k].detach().float().cpu().clone()
                if self.cache_text:
                    self.cache.put("text", keys[j], out[j])
        return out  # type: ignore[return-value]

    def batch(self, indices: Sequence[int], rngs: Sequence[random.Random]) -> Batch:
        buckets = {self.bucket(i) for i in indices}
        if len(buckets) != 1:
            raise ValueError(f"a batch must hold one bucket, got {sorted(buckets)}")
        plans = [self.crop_plan(i, rng) for i, rng in zip(indices, rngs)]
        captions = [process_caption(self.records[i].caption, self.caption_cfg, rng) for i, rng in zip(indices, rngs)]
        seeds = [rng.getrandbits(63) for rng in rngs]  # drawn last: the crop and caption draws stay as they were
        latents = torch.stack(self.encode_latents(indices, plans, seeds))
        ctx, mask = collate_contexts(self.encode_captions(captions))
        pos = torch.stack([crop_positions(p) for p in plans])
        addon = torch.tensor([[p.addon_info] for p in plans], dtype=torch.float32)
        return Batch(latents, ctx, mask, pos, addon, captions)

    def encode_all(
        self,
        *,
        batch_size: int = 4,
        progress: Callable[[int, int], None] | None = None,
    ) -> "LatentData":
        """Every image and caption encoded once, as a :class:`LatentData` to train from.

        For front-ends that must not run the encoders during training (ComfyUI would swap
        models in and out of the GPU under the training model). Each image gets one crop,
        drawn from ``seed`` and its index (the latent cache's rule), with its position map
        and aspect value; each caption is used as written (:func:`captions.clean_caption`:
        ``|||``/``%%`` resolved, no shuffle or dropout — a caption config that augments is
        refused, since one encoding per image cannot carry it). Images of one size are
        encoded together, ``batch_size`` at a time; equal captions are encoded once.
        ``progress(done, total)`` is called after each chunk of images.
        """
        if self.caption_cfg.is_random:
            raise DatasetError(
                "encode_all encodes each caption once, so caption augmentation (tag shuffle or dropout) cannot apply; "
                "turn it off, or train from this dataset directly (captions re-encoded every step)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self.records)
        plans = [plan_crop(r.width, r.height, self.sizes[i], self.bucket_cfg, self._fixed_crop_rng(i)) for i, r in enumerate(self.records)]
        latents: list[torch.Tensor | None] = [None] * n
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, plan in enumerate(plans):
            by_size.setdefault(plan.size, []).append(i)
        done = 0
        for size in sorted(by_size):
            group = by_size[size]
            for k in range(0, len(group), batch_size):
                chunk = group[k : k + batch_size]
                for i, z in zip(chunk, self.encode_latents(chunk, [plans[i] for i in chunk])):
                    latents[i] = z
                done += len(chunk)
                if progress is not None:
                    progress(done, n)
        captions = [clean_caption(r.caption, self.caption_cfg) for r in self.records]
        unique = sorted(set(captions))
        encoded: dict[str, torch.Tensor] = {}
        for k in range(0, len(unique), batch_size):
            chunk = unique[k : k + batch_size]
            encoded.update(zip(chunk, self.encode_captions(chunk)))
        return LatentData(
            latents,  # type: ignore[arg-type]
            [encoded[c] for c in captions],
            pos_maps=[crop_positions(p) for p in plans],
            addon_info=[p.addon_info for p in plans],
            repeats=[r.repeats for r in self.records],
            captions=captions,
        )

    def precache(self, *, rank: int = 0, world: int = 1, progress: Callable[[int, int], None] | None = None) -> None:
        """Fill the latent cache (and the text cache when captions are not augmented).

        With several data-parallel processes each fills its share; call a barrier after.
        """
        mine = [i for i in range(len(self)) if i % world == rank]
        for n, i in enumerate(mine):
            if self.cache_latents:
                self.encode_latents([i], [self.crop_plan(i, random.Random(0))])
            if self.cache_text and not self.caption_cfg.is_random:
                self.encode_captions([process_caption(self.records[i].caption, self.caption_cfg, random.Random(0))])
            if progress is not None:
                progress(n + 1, len(mine))


# --------------------------------------------------------------------------- precomputed tensors
class LatentData:
    """Precomputed model-space latents ``[4, h, w]`` with contexts ``[T, D]`` (one per latent).

    Position maps default to the full latent grid (``pos_maps`` may give crop maps) and
    ``addon_info`` to ``log(w / h)`` of each latent.
    """

    def __init__(
        self,
        latents: Sequence[torch.Tensor],
        contexts: Sequence[torch.Tensor],
        *,
        pos_maps: Sequence[torch.Tensor] | None = None,
        addon_info: Sequence[float] | None = None,
        repeats: Sequence[int] | None = None,
        captions: Sequence[str] | None = None,
    ) -> None:
        if len(latents) == 0:
            raise DatasetError("no latents were given")
        if len(contexts) != len(latents):
            raise DatasetError(f"got {len(latents)} latents but {len(contexts)} text contexts; give one context per latent")
        for i, z in enumerate(latents):
            if z.ndim != 3 or z.shape[0] != LATENT_CHANNELS:
                raise DatasetError(f"latent {i} has shape {list(z.shape)}; expected [{LATENT_CHANNELS}, h, w]")
            if z.shape[1] % 2 or z.shape[2] % 2:
                raise DatasetError(f"latent {i} is {z.shape[1]}x{z.shape[2]}; sides must be even (images multiple of 16 px)")
        for i, c in enumerate(contexts):
            if c.ndim != 2:
                raise DatasetError(f"text context {i} has shape {list(c.shape)}; expected [tokens, width]")
        self.latents = [z.detach().float().cpu() for z in latents]
        self.contexts = [c.detach().float().cpu() for c in contexts]
        self.pos_maps = None if pos_maps is None else [p.detach().float().cpu() for p in pos_maps]
        self.addon = list(addon_info) if addon_info is not None else [math.log(z.shape[2] / z.shape[1]) for z in self.latents]
        self._repeats = list(repeats) if repeats is not None else [1] * len(self.latents)
        self.captions = list(captions) if captions is not None else [""] * len(self.latents)

    def __len__(self) -> int:
        return len(self.latents)

    def repeats(self, index: int) -> int:
        return self._repeats[index]

    def bucket(self, index: int) -> tuple[int, int]:
        z = self.latents[index]
        return z.shape[1], z.shape[2]

    def batch(self, indices: Sequence[int], rngs: Sequence[random.Random]) -> Batch:
        latents = torch.stack([self.latents[i] for i in indices])
        ctx, mask = collate_contexts([self.contexts[i] for i in indices])
        _, _, h, w = latents.shape
        if self.pos_maps is not None:
            pos = torch.stack([self.pos_maps[i] for i in indices])
        else:
            pos = axial_grid(h, w)[None].expand(len(indices), -1, -1).clone()
        addon = torch.tensor([[self.addon[i]] for i in indices], dtype=torch.float32)
        return Batch(latents, ctx, mask, pos, addon, [self.captions[i] for i in indices])
