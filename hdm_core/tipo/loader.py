"""Finding and loading TIPO models from local files (never the network).

A TIPO model is either a transformers folder (what the hub repo ``KBlueLeaf/TIPO-200M-ft2``
holds: ``config.json``, ``model.safetensors``, ``tokenizer.model`` + tokenizer configs) or a
single ``.gguf`` file, which needs llama-cpp-python. Folders load as ``LlamaForCausalLM`` in
fp32 on CPU (bf16 on request) and fp16 on GPU, with the KV cache on. One loaded model is kept
for the next call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from .backends import LlamaCppTipo, TipoBackend, TransformersTipo
from ..checkpoint import CheckpointError, check_safetensors_file
from .errors import TipoDependencyError, TipoModelError
from .kgen_api import llama_cpp

GGUF_SUFFIX = ".gguf"
#: files of a transformers TIPO folder, as in the hub repos (the first three are required)
TRANSFORMERS_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.model",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
#: TIPO's added tokens; a tokenizer without them is not TIPO's
TIPO_SPECIAL_TOKENS = (
    "<|empty|>", "<|very_short|>", "<|short|>", "<|long|>", "<|very_long|>", "<|tag_to_long|>", "<|long_to_tag|>",
    "<|short_to_tag|>", "<|short_to_long|>", "<|tag_to_short_to_long|>", "<|short_to_tag_to_long|>",
    "<|short_to_long_to_tag|>", "<|gen_meta|>",
)  # fmt: skip
MODEL_SOURCE = "https://huggingface.co/KBlueLeaf/TIPO-200M-ft2"
WHERE_TO_GET = (
    "Download a TIPO model into it, either as a folder (e.g. TIPO-200M-ft2/) holding "
    + ", ".join(TRANSFORMERS_FILES)
    + f" from {MODEL_SOURCE} (or TIPO-500M-ft, TIPO-200M), or as a single .gguf file from the same "
    "repo (e.g. TIPO-200M-ft2-F16.gguf), which needs llama-cpp-python"
)
_MAX_DEPTH = 3

_cache_lock = threading.Lock()
_cache: dict[tuple, TipoBackend] = {}


# --------------------------------------------------------------------------- finding


def find_models(folders: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """``{name: path}`` of the TIPO models in ``folders``: transformers folders and ``.gguf`` files.

    Names are relative to their folder (``TIPO-200M-ft2``, ``gguf/TIPO-200M-ft2-F16.gguf``),
    sorted; the first folder wins when two hold the same name.
    """
    found: dict[str, Path] = {}
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            if here != root and "config.json" in filenames:
                found.setdefault(here.relative_to(root).as_posix(), here)
                dirnames.clear()
                continue
            for f in filenames:
                if f.lower().endswith(GGUF_SUFFIX):
                    found.setdefault((here / f).relative_to(root).as_posix(), here / f)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < _MAX_DEPTH else []
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def model_kind(path: str | os.PathLike) -> str:
    """``"gguf"`` for a ``.gguf`` file (llama-cpp-python), ``"transformers"`` for a model folder.

    The node's backend choice and :func:`load_tipo` must agree on what a path is, so both ask here.
    """
    path = Path(path)
    return "gguf" if path.suffix.lower() == GGUF_SUFFIX and not path.is_dir() else "transformers"


def no_model_message(folders: Iterable[str | os.PathLike]) -> str:
    where = ", ".join(str(f) for f in folders) or "(no folder configured)"
    return f"No TIPO model found in {where}. {WHERE_TO_GET}."


def resolve_model(model: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> Path:
    """A model name from :func:`find_models`, a path to a TIPO folder / ``.gguf`` file, or ``""``: the only model found."""
    folders = list(folders)
    name = str(model).strip()
    models = find_models(folders)
    if not name and len(models) == 1:
        return next(iter(models.values()))
    if not name and models:
        raise TipoModelError(f"several TIPO models found ({', '.join(models)}): choose one")
    if name:
        if name in models:
            return models[name]
        path = Path(name).expanduser()
        if path.exists():
            return path
        if models:
            raise TipoModelError(
                f"TIPO model '{name}' not found in {', '.join(str(f) for f in folders)}; "
                f"available: {', '.join(models)}. {WHERE_TO_GET}."
            )
        raise TipoModelError(f"TIPO model '{name}' is neither a path nor a model in the model folders. " + no_model_message(folders))
    raise TipoModelError(no_model_message(folders))


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU when there is one, else CPU."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise TipoModelError(f"device '{device}' is not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TipoModelError(f"device '{device}' asked for, but this PyTorch has no CUDA GPU; use cpu or auto")
    return dev


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on GPUs; fp32 on CPU (many CPUs have no fast fp16, and TIPO is small). ``bf16`` on request."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() in ("", "auto"):
        return torch.float16 if device.type in ("cuda", "mps", "xpu") else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise TipoModelError(f"dtype '{dtype}' is not supported; use auto, fp32, bf16 or fp16") from None


# --------------------------------------------------------------------------- loading


def check_transformers_folder(path: Path) -> None:
    """Fail early, naming the missing file, instead of deep inside transformers."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise TipoModelError(
                f"TIPO model '{path.name}' has only pickle weights (.bin/.pt), which can run code when loaded; "
                f"download model.safetensors from {MODEL_SOURCE} into {path}"
            )
        missing.append("model.safetensors")
    for weights in sorted(path.glob("*.safetensors")):  # HDM's format probe before transformers reads it
        try:
            check_safetensors_file(weights)
        except CheckpointError as exc:
            raise TipoModelError(str(exc)) from None
    if not (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
        missing.append("tokenizer.model")
    if missing:
        raise TipoModelError(
            f"TIPO model folder {path} lacks {', '.join(missing)}. A TIPO folder holds "
            f"{', '.join(TRANSFORMERS_FILES)}: download them from {MODEL_SOURCE} (or the TIPO repo it came from)."
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TipoModelError(f"{path / 'config.json'} cannot be read ({exc}); download it again") from None
    if config.get("model_type") != "llama":
        raise TipoModelError(
            f"TIPO model '{path.name}' is a '{config.get('model_type')}' model "
            f"({', '.join(config.get('architectures') or [])}); only TIPO's LLaMA models (TIPO-100M, -200M, "
            "-500M and their -ft versions) load from a folder. TIPOv2 / TIPO-v2.1 (1B-A200M) need their .gguf "
            "file and llama-cpp-python."
        )
    if not (path / "tokenizer.json").is_file():
        absent = [m for m in ("sentencepiece", "google.protobuf") if _find_spec(m) is None]
        if absent:
            raise TipoDependencyError(
                f"reading TIPO's tokenizer.model needs the Python packages sentencepiece and protobuf "
                f"({', '.join(absent)} missing): pip install sentencepiece protobuf"
            )


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _load_transformers(path: Path, device: torch.device, dtype: torch.dtype, offload_device: torch.device | None) -> TransformersTipo:
    check_transformers_folder(path)
    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds here
        raise TipoModelError(f"cannot load the tokenizer of TIPO model {path}: {exc}") from exc
    vocab = tokenizer.get_vocab()
    lacking = [t for t in TIPO_SPECIAL_TOKENS if t not in vocab]
    if lacking:
        raise TipoModelError(
            f"the tokenizer in {path} is not TIPO's: it lacks {', '.join(lacking)}; copy tokenizer.model, "
            f"tokenizer_config.json, special_tokens_map.json and added_tokens.json from {MODEL_SOURCE}"
        )
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **{dtype_kw: dtype})
    except Exception as exc:
        raise TipoModelError(f"cannot load TIPO model {path}: {exc}") from exc
    if model.config.vocab_size < len(tokenizer):
        raise TipoModelError(
            f"TIPO model {path}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}; "
            "model and tokenizer files come from different repos"
        )
    model.requires_grad_(False).eval().to(offload_device or device)
    return TransformersTipo(model, tokenizer, device, name=path.name, offload_device=offload_device)


def _load_gguf(path: Path, device: torch.device) -> LlamaCppTipo:
    module, why = llama_cpp()
    if module is None:
        raise TipoDependencyError(
            f"TIPO model '{path.name}' is a .gguf file, which needs llama-cpp-python, but {why}. "
            "Install it into the Python that runs ComfyUI (pip install llama-cpp-python, or a prebuilt wheel "
            "for your CUDA version), or use the transformers folder of the same model instead "
            f"({', '.join(TRANSFORMERS_FILES)} from {MODEL_SOURCE})."
        )
    try:
        llama = module.Llama(
            model_path=str(path), n_ctx=2048, n_gpu_layers=0 if device.type == "cpu" else -1, verbose=False
        )
    except Exception as exc:
        raise TipoModelError(f"llama-cpp-python cannot load {path}: {exc}") from exc
    return LlamaCppTipo(llama, module, name=path.name)


def load_tipo(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    offload_device: str | torch.device | None = None,
) -> TipoBackend:
    """Load (or reuse) the TIPO model at ``path``: a transformers folder or a ``.gguf`` file.

    ``offload_device``: where a transformers model waits between runs (e.g. CPU, to give the
    GPU back to the image model); it is moved to ``device`` only while generating.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise TipoModelError(f"TIPO model {path} does not exist. {WHERE_TO_GET}.")
    dev = resolve_device(device)
    is_gguf = path.is_file() and model_kind(path) == "gguf"
    if path.is_file() and not is_gguf:
        raise TipoModelError(f"{path} is neither a .gguf file nor a TIPO model folder. {WHERE_TO_GET}.")
    dt = None if is_gguf else resolve_dtype(dtype, dev)
    off = torch.device(offload_device) if offload_device is not None else None
    marker = path if path.is_file() else path / "config.json"
    stamp = marker.stat().st_mtime_ns if marker.exists() else 0  # reload when the files are replaced
    key = (str(path.resolve()), str(dev), str(dt), str(off), stamp)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        _cache.clear()  # one TIPO model at a time
        backend = _load_gguf(path, dev) if is_gguf else _load_transformers(path, dev, dt, off)
        _cache[key] = backend
        return backend


def clear_cache() -> None:
    """Forget the loaded model (frees its memory once nothing else holds it)."""
    with _cache_lock:
        _cache.clear()
