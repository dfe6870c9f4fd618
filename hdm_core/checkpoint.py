"""Reading HDM checkpoints: file formats, key prefixes, architecture inference, strict loading.

State-dict names are an API: released files hold ``unet.model.<XUT keys>`` (plus ``vae.*``
and, in trainer checkpoints, ``te.text_models.0.*``). Other front-ends re-save the XUT under
``model.diffusion_model.`` (ComfyUI), ``diffusion_model.``, ``model.`` (diffusers-style
wrapper) or bare. Everything here fails with a :class:`CheckpointError` whose message
names the problem and what to do about it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .config import TreadConfig, XUTConfig
from .fileformat import Probe, SaveError, atomic_write, describe_os_error, probe_file

XUT_PREFIXES = ("unet.model.", "model.diffusion_model.", "diffusion_model.", "model.", "")
SENTINEL = "in_patch.proj.weight"
OPTIONAL_KEYS = frozenset({"time_emb.freqs"})
# Other components stored beside the XUT in all-in-one files; never XUT keys, even bare.
FOREIGN_PREFIXES = ("vae.", "te.", "first_stage_model.", "cond_stage_model.", "text_encoders.", "conditioner.",
                    "vae_mean", "vae_std", "model_ema.", "lycoris_", "lora_")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message saying why and what to do."""


# --------------------------------------------------------------------------- reading files
class SafetensorsDict(Mapping):
    """Read-only mapping over one or more safetensors files; tensors are read on access."""

    def __init__(self, paths: list[Path], *, probed: bool = False) -> None:
        """``probed``: the caller has already checked the files (:func:`read_state_dict`), so
        their headers are not read once more here (the training cache reads one per sample)."""
        from safetensors import safe_open

        self._files = []
        self._where: dict[str, Any] = {}
        self.metadata: dict[str, str] = {}
        for path in paths:
            if not probed:
                check_safetensors_file(path)
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot read safetensors file ({exc}); download it again") from exc
            self._files.append(handle)
            self.metadata.update(handle.metadata() or {})
            for key in handle.keys():
                self._where[key] = handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> list[int]:
        return list(self._where[key].get_slice(key).get_shape())

    def dtype_name(self, key: str) -> str:
        return self._where[key].get_slice(key).get_dtype()


def _probe(path: Path) -> Probe:
    """:func:`~hdm_core.fileformat.probe_file`, an unreadable file as :class:`CheckpointError`."""
    try:
        return probe_file(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read this file ({exc})") from exc


def check_safetensors_file(path: Path) -> dict[str, Any]:
    """Validate a safetensors file through :func:`~hdm_core.fileformat.probe_file` (header,
    length, foreign kinds); returns the parsed header or raises :class:`CheckpointError`."""
    path = Path(path)
    probe = _probe(path)
    if not probe.ok:
        raise CheckpointError(f"{path}: {probe.message}")
    return probe.header


def check_weight_file(path: str | os.PathLike) -> Probe:
    """The probe's verdict for a reader that hands the file to another loader (ComfyUI's
    ``load_torch_file``, which picks its reader by file name): a usable safetensors file, or a
    pickle under a pickle name (that loader reads it with ``weights_only``); anything else
    raises :class:`CheckpointError` with the probe's message."""
    path = Path(path)
    probe = _probe(path)
    if probe.ok:
        if path.suffix.lower() not in (".safetensors", ".sft"):
            raise CheckpointError(f"{path}: this is a safetensors file with a {path.suffix or 'missing'} extension; rename it to .safetensors")
        return probe
    if probe.is_pickle and path.suffix.lower() in _PICKLE_SUFFIXES:
        return probe
    raise CheckpointError(f"{path}: {probe.message}")


def _load_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: refusing to load a pickled checkpoint ({path.suffix}); pickles can run arbitrary code. "
            "Use a .safetensors file, or opt in with allow_pickle=True (loads with torch.load(weights_only=True))"
        )
    try:
        with open(path, "rb") as f:  # a file object: torch must not guess the format from the name
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused or failed ({exc}); "
            "the file holds more than plain tensors or is damaged. Convert it to .safetensors in a trusted environment"
        ) from exc
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: the pickle does not hold a state dict of tensors")
    return obj


def _weight_files_in(folder: Path) -> list[Path] | None:
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (KeyError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{index}: not a valid shard index ({exc})") from exc
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{folder}: shard files listed in {index_name} are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files
    return None


def _resolve_folder(folder: Path) -> list[Path]:
    for sub in ("", "unet", "transformer", "denoiser"):
        d = folder / sub if sub else folder
        if d.is_dir():
            files = _weight_files_in(d)
            if files:
                return files
    listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise CheckpointError(
        f"{folder}: no model weights found. Expected a diffusers-style folder with "
        "diffusion_pytorch_model.safetensors (or a *.safetensors.index.json with its shards), "
        f"directly or in unet/ or transformer/; the folder holds: {listing}"
    )


def read_state_dict(
    source: str | os.PathLike | Mapping[str, torch.Tensor], *, allow_pickle: bool = False
) -> Mapping[str, torch.Tensor]:
    """A mapping of tensors from a file, a folder or an in-memory state dict.

    Safetensors files are read lazily, so taking the XUT out of an all-in-one file does not
    read its VAE. Pickled files (``.ckpt``/``.pt``/``.pth``/``.bin``) are refused unless
    ``allow_pickle`` is set, and then loaded with ``torch.load(weights_only=True)`` only.
    """
    if isinstance(source, Mapping):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        return SafetensorsDict(_resolve_folder(path))
    probe = _probe(path)
    if probe.is_pickle:
        return _load_pickle(path, allow_pickle)
    if not probe.ok:
        raise CheckpointError(f"{path}: {probe.message}")
    return SafetensorsDict([path], probed=True)  # whatever its name (.ckpt/.bin included): the content decides


# --------------------------------------------------------------------------- understanding keys
def find_xut_prefix(keys: Mapping[str, Any] | list[str]) -> str | None:
    """The prefix under which the XUT keys live, or ``None`` when there are none."""
    keyset = set(keys)
    for prefix in XUT_PREFIXES:
        if prefix + SENTINEL in keyset and any(k.startswith(prefix + "backbone.") for k in keyset):
            return prefix
    for key in sorted(keyset):  # any other wrapper: trust the sentinel
        if key.endswith("." + SENTINEL):
            prefix = key[: -len(SENTINEL)]
            if any(k.startswith(prefix + "backbone.") for k in keyset):
                return prefix
    return None


def describe_state_dict(keys: list[str] | Mapping[str, Any]) -> str:
    """A short guess at what a state dict holds, for "this is not an HDM file" errors."""
    keys = list(keys)
    if not keys:
        return "it holds no tensors at all"
    joined = "\n".join(keys)

    def has(*parts: str) -> bool:
        return any(p in joined for p in parts)

    if has("lora_down", "lora_up", "lokr_w1", "hada_w1", "lycoris_", "lora_A", "lora_B", "oft_blocks"):
        return "it looks like a LoRA/LyCORIS adapter: load it with a LoRA loader on top of an HDM model"
    if has("input_blocks.0.0.weight", "label_emb.0.0.weight"):
        kind = "an SDXL" if has("label_emb.") else "a Stable Diffusion"
        return f"it looks like {kind} UNet checkpoint (LDM layout), not HDM"
    if has("down_blocks.0.resnets.0.conv1.weight") and has("time_embedding.") and has("mid_block."):
        return "it looks like a diffusers UNet, not HDM"
    if has("double_blocks.0.", "single_blocks.0."):
        return "it looks like a Flux-family transformer, not HDM"
    if has("joint_blocks.0."):
        return "it looks like an SD3/MMDiT transformer, not HDM"
    if has("transformer_blocks.0.") and has("pos_embed"):
        return "it looks like a DiT-style transformer of another model family, not HDM"
    if has("self_attn.q_norm.weight") and has("embed_tokens.weight"):
        return "it looks like a Qwen3 text encoder; load it as the text encoder, not as the diffusion model"
    # CLIP-L/G keys also contain "layers.0.self_attn.q_proj.weight": check CLIP/T5 first.
    if has("text_model.encoder.layers.", "encoder.block.0.layer."):
        return "it looks like a CLIP/T5 text encoder, not HDM"
    if has("embed_tokens.weight", "layers.0.self_attn.q_proj.weight"):
        return "it looks like a language-model text encoder, not a diffusion model"
    if has("decoder.conv_in.weight", "decoder.up.0.", "decoder.up_blocks.0.") and not has("backbone."):
        return "it looks like a bare VAE (no diffusion model inside); load it as the VAE"
    return f"it holds {len(keys)} tensors, none of them XUT keys (first keys: {', '.join(keys[:4])})"


def _count_indexed(keys: set[str], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in keys):
        n += 1
    return n


def infer_config(shapes: Mapping[str, list[int] | torch.Size]) -> XUTConfig:
    """Infer the XUT architecture from the shapes of a prefix-free XUT state dict."""
    keys = set(shapes)

    def shape(key: str) -> list[int]:
        if key not in shapes:
            raise CheckpointError(f"cannot infer the XUT architecture: tensor '{key}' is missing from the checkpoint")
        return list(shapes[key])

    dim, input_dim, patch, _ = shape("in_patch.proj.weight")
    ctx_dim = shape("ctx_proj.weight")[1]
    depth = _count_indexed(keys, "backbone.enc_blocks.")
    enc_blocks = _count_indexed(keys, "backbone.enc_blocks.0.")
    dec_blocks = _count_indexed(keys, "backbone.dec_blocks.0.")
    if not depth or not enc_blocks or not dec_blocks:
        raise CheckpointError("cannot infer the XUT architecture: no encoder/decoder blocks found under 'backbone.'")
    block = "backbone.enc_blocks.0.0."
    heads, quarter, _ = shape(block + "attn.rope.freqs")
    dim_head = quarter * 4
    mlp_dim = shape(block + "mlp.w3.weight")[1]
    prev = _count_indexed(keys, "prev_tread_trns.blocks.")
    post = _count_indexed(keys, "post_tread_trns.blocks.")
    tread = TreadConfig(prev_trns_depth=prev, post_trns_depth=post) if prev or post else None
    addon = shape("addon_info_embs_proj.0.weight")[1] if "addon_info_embs_proj.0.weight" in keys else 0
    try:
        return XUTConfig(
            patch_size=patch, input_dim=input_dim, dim=dim, ctx_dim=ctx_dim, heads=heads, dim_head=dim_head,
            mlp_dim=mlp_dim, depth=depth, enc_blocks=enc_blocks, dec_blocks=dec_blocks,
            addon_info_embs_dim=addon, tread_config=tread,
        )
    except ValueError as exc:
        raise CheckpointError(f"cannot infer the XUT architecture: {exc}") from exc


def _shapes(sd: Mapping[str, Any]) -> dict[str, list[int]]:
    if isinstance(sd, SafetensorsDict):
        return {k: sd.shape(k) for k in sd}
    return {k: list(v.shape) for k, v in sd.items()}


def key_diff(expected: Mapping[str, Any], got: Mapping[str, Any], optional: frozenset[str] = frozenset(), show: int = 5) -> str:
    """Readable description of missing/unexpected keys and shape mismatches ('' when none)."""
    missing = sorted(k for k in expected if k not in got and k not in optional)
    unexpected = sorted(k for k in got if k not in expected)
    mismatched = sorted(k for k in expected if k in got and list(expected[k]) != list(got[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:show])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:show])})")
    for k in mismatched[:show]:
        parts.append(f"shape mismatch for '{k}': file has {list(got[k])}, model expects {list(expected[k])}")
    if len(mismatched) > show:
        parts.append(f"... and {len(mismatched) - show} more shape mismatches")
    return "; ".join(parts)


def split_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{short name: full key}`` for keys under ``prefix`` (bare prefix: minus other components)."""
    return {
        k[len(prefix):]: k
        for k in sd
        if k.startswith(prefix) and (prefix or not k.startswith(FOREIGN_PREFIXES))
    }


# --------------------------------------------------------------------------- loading the XUT
_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _file_dtype(sd: Mapping[str, Any], key: str) -> torch.dtype | None:
    if isinstance(sd, SafetensorsDict):
        return _ST_DTYPES.get(sd.dtype_name(key))
    return sd[key].dtype


def _dominant_float_dtype(dtypes: list[torch.dtype | None]) -> torch.dtype:
    """The most common compute dtype among ``dtypes`` (float32 when none is one)."""
    floats = [d for d in dtypes if d in _COMPUTE_DTYPES]
    return max(set(floats), key=floats.count) if floats else torch.float32


def load_xut(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    allow_pickle: bool = False,
    operations: Any = None,
    attention: Any = None,
):
    """Load the XUT from a ``.safetensors`` file, a diffusers-style folder or a state dict.

    The XUT keys are found under any known prefix, the architecture is inferred from the
    tensor shapes (no config file needed), and loading is strict: any missing, unexpected
    or mis-shaped tensor raises :class:`CheckpointError` with a readable diff. ``dtype``
    defaults to the file's own; the model is returned in eval mode. The file's
    ``time_emb.freqs`` buffer is kept (released files hold an fp16-rounded copy the model
    was used with); when absent it is recomputed.
    """
    from .xut import FLOAT32_PREFIXES, XUT, island_dtype

    sd = read_state_dict(source, allow_pickle=allow_pickle)
    prefix = find_xut_prefix(sd)
    if prefix is None:
        where = f"{source}: " if not isinstance(source, Mapping) else ""
        raise CheckpointError(f"{where}no HDM/XUT diffusion-model weights found; {describe_state_dict(list(sd))}")
    names = split_prefix(sd, prefix)
    all_shapes = _shapes(sd)
    shapes = {short: all_shapes[full] for short, full in names.items()}
    config = infer_config(shapes)
    device = torch.device(device) if device is not None else torch.device("cpu")

    with torch.device("meta"):
        model = XUT(config, dtype=dtype or torch.float32, device="meta", operations=operations, attention=attention)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    problems = key_diff(expected, shapes, OPTIONAL_KEYS)
    if problems:
        raise CheckpointError(
            f"the checkpoint's XUT weights (prefix '{prefix}') do not match the architecture inferred from them: "
            f"{problems}. The file is damaged or from an unsupported XUT variant."
        )

    if dtype is None:
        dtype = _dominant_float_dtype([_file_dtype(sd, full) for short, full in names.items() if short not in OPTIONAL_KEYS])
    model.dtype = dtype
    loaded = {}
    for short, full in names.items():  # one tensor at a time: no second full copy in memory
        target = torch.float32 if short in OPTIONAL_KEYS else island_dtype(dtype) if short.startswith(FLOAT32_PREFIXES) else dtype
        loaded[short] = sd[full].to(device=device, dtype=target)
    if "time_emb.freqs" not in loaded:
        half = config.dim // 2
        freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)[None]
        loaded["time_emb.freqs"] = freqs.to(device)
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------- writing
def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (see :func:`~hdm_core.fileformat.atomic_write`).

    Any write failure (disk full, permission denied, ...) raises :class:`SaveError` naming
    the path and the cause; the file that was there before is left as it was.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    except Exception as exc:  # OSError, or safetensors' own error wrapping one
        error = SaveError(f"cannot write {path}: {describe_os_error(exc)}; the previous file (if any) is kept")
        error.errno = getattr(exc, "errno", None)
        raise error from exc
    return path
