"""Finding HDM's weight files on disk (and, only when asked, downloading them).

HDM needs two downloads: the released all-in-one file (XUT + EQ-SDXL-VAE, no text
encoder) from ``KBlueLeaf/HDM-xut-340M-anime`` and the unmodified ``Qwen/Qwen3-0.6B``.
They are looked for, in order: paths given explicitly, ``./models`` (the folder HDM's
own README puts them in), a ComfyUI ``models`` folder (``--comfyui`` / ``COMFYUI_PATH``:
``checkpoints/``, ``diffusion_models/``, ``text_encoders/``, ``clip/``), and a Hugging
Face hub cache that already holds Qwen3-0.6B. Nothing is fetched unless ``download=True``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError

HDM_REPO = "KBlueLeaf/HDM-xut-340M-anime"
HDM_FILE = "hdm-xut-340M-1024px-note.safetensors"
QWEN3_REPO = "Qwen/Qwen3-0.6B"
QWEN3_DIR = "Qwen3-0.6B"
DEFAULT_MODELS_DIR = Path("models")

_CKPT_GLOB = "hdm-xut-*.safetensors"
# qwen3-0.6b, Qwen3-0.6B, qwen3_0.6b, qwen3_06b …; base models (Anima's qwen_3_06b_base) are not HDM's.
_QWEN3_NAME = re.compile(r"qwen_?3[-_.]?0[._]?6b", re.IGNORECASE)


class WeightsNotFound(CheckpointError):
    """HDM weights are missing; the message says what to download and where to put it."""


@dataclass(frozen=True)
class WeightPaths:
    ckpt: Path
    te: Path
    vae: Path | None = None  # None: the VAE comes from ``ckpt``


def comfyui_models_dir(comfyui: str | os.PathLike | None = None) -> Path | None:
    """``<ComfyUI>/models`` from ``comfyui`` or ``COMFYUI_PATH`` (a ComfyUI root or its models folder)."""
    root = comfyui if comfyui is not None else os.environ.get("COMFYUI_PATH")
    if not root:
        return None
    root = Path(root).expanduser()
    if (root / "models").is_dir():
        return root / "models"
    if root.name == "models" and root.is_dir():
        return root
    return None


def _hf_cache_dirs() -> list[Path]:
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        hub = str(Path(home) / "hub")
    snapshots = Path(hub).expanduser() / ("models--" + QWEN3_REPO.replace("/", "--")) / "snapshots"
    return sorted(snapshots.glob("*")) if snapshots.is_dir() else []


def checkpoint_dirs(models_dir: str | os.PathLike | None, comfyui: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(models_dir)] if models_dir is not None else []
    comfy = comfyui_models_dir(comfyui)
    if comfy is not None:
        dirs += [comfy / "checkpoints", comfy / "diffusion_models"]
    return dirs


def text_encoder_dirs(models_dir: str | os.PathLike | None, comfyui: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(models_dir)] if models_dir is not None else []
    comfy = comfyui_models_dir(comfyui)
    if comfy is not None:
        dirs += [comfy / "text_encoders", comfy / "clip"]
    return dirs


def find_checkpoint(dirs: list[Path]) -> Path | None:
    """The released HDM file (1024px preferred over the 512/768px ones) in ``dirs`` or one level below."""
    for d in dirs:
        if not d.is_dir():
            continue
        exact = d / HDM_FILE
        if exact.is_file():
            return exact
        found = sorted(d.glob(_CKPT_GLOB)) + sorted(d.glob("*/" + _CKPT_GLOB))
        if found:
            return next((p for p in found if "1024" in p.name), found[0])
    return None


def _is_qwen3_folder(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def find_text_encoder(dirs: list[Path], use_hf_cache: bool = True) -> Path | None:
    """A Qwen3-0.6B folder (HF layout) or single ``.safetensors`` in ``dirs``, else the HF cache."""
    for d in dirs:
        if not d.is_dir():
            continue
        for child in sorted(d.iterdir()):
            if not _QWEN3_NAME.search(child.name) or "base" in child.name.lower():
                continue
            if child.is_dir() and _is_qwen3_folder(child):
                return child
            if child.is_file() and child.suffix == ".safetensors":
                return child
    if use_hf_cache:
        for snap in _hf_cache_dirs():
            if _is_qwen3_folder(snap):
                return snap
    return None


def _searched(dirs: list[Path]) -> str:
    return ", ".join(f"{p.resolve()}" + ("" if p.is_dir() else " (no such folder)") for p in dirs) or "no folder"


def missing_message(
    missing_ckpt: bool, missing_te: bool, searched_ckpt: list[Path], searched_te: list[Path], tried_download: bool = False
) -> str:
    """What to download and where to put it."""
    lines = ["HDM weights not found."]
    if missing_ckpt:
        lines += [
            f"  * Diffusion model + VAE: '{HDM_FILE}' (about 0.9 GB)",
            f"      from https://huggingface.co/{HDM_REPO}/blob/main/{HDM_FILE}",
            "      put it in ./models/ (or <ComfyUI>/models/checkpoints/), or pass --ckpt PATH",
            "      searched: " + _searched(searched_ckpt),
        ]
    if missing_te:
        lines += [
            f"  * Text encoder: {QWEN3_REPO} (model.safetensors + config.json, over 1 GB)",
            f"      from https://huggingface.co/{QWEN3_REPO}",
            f"      put both files in ./models/{QWEN3_DIR}/ (or <ComfyUI>/models/text_encoders/{QWEN3_DIR}/), "
            "or pass --te PATH",
            "      searched: " + _searched(searched_te) + ", the Hugging Face cache",
        ]
    if not tried_download:
        lines.append("Online? Add --download to fetch the missing files into ./models/ (opt-in, from the Hugging Face hub).")
    lines.append("Use --comfyui PATH (or COMFYUI_PATH) to search a ComfyUI models folder.")
    return "\n".join(lines)


def download_checkpoint(models_dir: str | os.PathLike) -> Path:
    """Fetch the released HDM file into ``models_dir`` (opt-in; imports huggingface_hub lazily)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise WeightsNotFound("--download needs the huggingface_hub package: pip install huggingface_hub") from exc
    return Path(hf_hub_download(HDM_REPO, HDM_FILE, local_dir=str(models_dir)))


def resolve_weights(
    ckpt: str | os.PathLike | None = None,
    te: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    *,
    models_dir: str | os.PathLike | None = DEFAULT_MODELS_DIR,
    comfyui: str | os.PathLike | None = None,
    download: bool = False,
    use_hf_cache: bool = True,
) -> WeightPaths:
    """Locate (or, with ``download``, fetch) the checkpoint and the text encoder.

    Explicit paths must exist. When ``te`` is not given and the checkpoint itself holds a
    text encoder (an HDM trainer checkpoint with ``te.*`` keys), the checkpoint is used.
    Raises :class:`WeightsNotFound` naming the files to get and where to put them.
    """
    from .text import has_text_encoder  # imports transformers lazily

    for label, path in (("--ckpt", ckpt), ("--te", te), ("--vae", vae)):
        if path is not None and not Path(path).expanduser().exists():
            hint = {
                "--ckpt": f"the released file is '{HDM_FILE}' from https://huggingface.co/{HDM_REPO}",
                "--te": f"HDM's text encoder is {QWEN3_REPO} (a folder with model.safetensors + config.json)",
                "--vae": "the VAE is normally taken from the HDM checkpoint itself; leave --vae out",
            }[label]
            raise WeightsNotFound(f"{label} {path}: no such file or folder ({hint})")

    ckpt_dirs = checkpoint_dirs(models_dir, comfyui)
    te_dirs = text_encoder_dirs(models_dir, comfyui)
    ckpt_path = Path(ckpt).expanduser() if ckpt is not None else find_checkpoint(ckpt_dirs)
    te_path = Path(te).expanduser() if te is not None else None
    if te_path is None and ckpt_path is not None and has_text_encoder(ckpt_path):
        te_path = ckpt_path
    if te_path is None:
        te_path = find_text_encoder(te_dirs, use_hf_cache)

    if download and (ckpt_path is None or te_path is None):
        from .text import download_qwen3

        target = Path(models_dir if models_dir is not None else DEFAULT_MODELS_DIR)
        try:
            if ckpt_path is None:
                ckpt_path = download_checkpoint(target)
            if te_path is None:
                te_path = download_qwen3(target / QWEN3_DIR)
        except WeightsNotFound:
            raise
        except Exception as exc:  # network/hub errors: say what failed and what to do instead
            raise WeightsNotFound(
                f"download failed ({type(exc).__name__}: {exc}).\n"
                + missing_message(ckpt_path is None, te_path is None, ckpt_dirs, te_dirs, tried_download=True)
            ) from exc

    if ckpt_path is None or te_path is None:
        raise WeightsNotFound(missing_message(ckpt_path is None, te_path is None, ckpt_dirs, te_dirs))
    return WeightPaths(ckpt=ckpt_path, te=te_path, vae=Path(vae).expanduser() if vae is not None else None)
