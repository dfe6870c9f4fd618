"""HDM's text encoder: Qwen3-0.6B through ``transformers``, encoded the way HDM was used.

HDM conditions on the **last hidden state** (after the final RMSNorm) of an unmodified
``Qwen/Qwen3-0.6B`` (``Qwen3Model``, no LM head). The reference inference encodes each
prompt list on its own with ``padding="longest"``, no truncation, no BOS/EOS and no chat
template, running the encoder with the padding attention mask; the XUT then sees every
position (pads included) without a mask. Positive and negative prompts are encoded in
**separate** calls, so their lengths differ. An empty prompt has zero tokens: it gives a
``[B, 0, 1024]`` context (XUT accepts ``T = 0``) without running the encoder.

HDM's **training** encoded captions differently (:data:`TRAIN_MAX_TOKENS`): every caption
truncated and right-padded with ``<|endoftext|>`` to exactly 256 tokens, the encoder run
with the padding mask, and the XUT trained on all 256 positions, pads included, without a
mask. ``encode(prompts, max_length=TRAIN_MAX_TOKENS)`` reproduces that;
:meth:`TextEncoder.encode_each` gives the inference-style contexts (each prompt's own
tokens, no pads) for a batch of prompts.

The architecture comes from ``configs/qwen3-0.6b.json`` shipped with this package and the
tokenizer from ``tokenizer/qwen3/`` (Qwen's Apache-2.0 vocabulary), so nothing is fetched
from the hub unless a caller asks for it (:func:`download_qwen3`). Weights come from a
local ``.safetensors`` file or folder in any of the layouts listed in :data:`TE_PREFIXES`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import (
    CheckpointError,
    SafetensorsDict,
    _dominant_float_dtype,
    _file_dtype,
    _shapes,
    describe_state_dict,
    key_diff,
    read_state_dict,
)

PACKAGE_DIR = Path(__file__).resolve().parent
QWEN3_CONFIG_FILE = PACKAGE_DIR / "configs" / "qwen3-0.6b.json"
TOKENIZER_DIR = PACKAGE_DIR / "tokenizer" / "qwen3"
QWEN3_REPO = "Qwen/Qwen3-0.6B"
PAD_TOKEN_ID = 151643  # <|endoftext|>
#: HDM's training recipe: captions truncated / padded to exactly this many tokens.
TRAIN_MAX_TOKENS = 256

#: Where Qwen3 weights live in the files HDM users have: an HDM trainer checkpoint, a
#: ComfyUI-saved text encoder, a Hugging Face ``Qwen3Model``/``Qwen3ForCausalLM`` file, bare.
TE_PREFIXES = (
    "te.text_models.0.",
    "text_encoders.qwen3_06b.transformer.model.",
    "qwen3_06b.transformer.model.",
    "model.",
    "",
)
_SENTINEL = "embed_tokens.weight"
_LAYER_SENTINEL = "layers.0.self_attn.q_proj.weight"
#: Keys a file may carry that ``Qwen3Model`` does not use (tied LM head, rotary caches).
_IGNORED_SUFFIXES = ("lm_head.weight", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


# --------------------------------------------------------------------------- config + tokenizer
def qwen3_config_dict(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The bundled Qwen3-0.6B architecture (as a plain dict), with ``overrides`` applied."""
    cfg = json.loads(QWEN3_CONFIG_FILE.read_text())
    if overrides:
        cfg.update(overrides)
    return cfg


def make_qwen3_config(cfg: Mapping[str, Any] | None = None):
    """A ``transformers.Qwen3Config`` from a dict (default: the bundled Qwen3-0.6B one).

    Keys of a Hugging Face ``config.json`` that are not constructor arguments
    (``architectures``, ``model_type``, ``torch_dtype`` …) are dropped.
    """
    from transformers import Qwen3Config

    cfg = dict(qwen3_config_dict() if cfg is None else cfg)
    for key in ("model_type", "architectures", "torch_dtype", "transformers_version", "_name_or_path", "auto_map"):
        cfg.pop(key, None)
    # transformers 5 takes ``rope_parameters``; 4.x takes ``rope_theta`` (and would silently
    # keep its 10000 default if only ``rope_parameters`` were given).
    rope = cfg.pop("rope_parameters", None) or {}
    theta = cfg.pop("rope_theta", rope.get("rope_theta", 1000000.0))
    if "rope_parameters" in inspect.signature(Qwen3Config.__init__).parameters:
        cfg["rope_parameters"] = {"rope_type": "default", **rope, "rope_theta": theta}
    else:  # pragma: no cover - transformers 4.x
        cfg["rope_theta"] = theta
    config = Qwen3Config(**cfg)
    config._attn_implementation = "sdpa"
    return config


def load_tokenizer(path: str | os.PathLike | None = None):
    """The Qwen3 tokenizer (bundled with this package unless ``path`` names another folder)."""
    from transformers import AutoTokenizer

    folder = Path(path) if path is not None else TOKENIZER_DIR
    if not (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{folder}: no Qwen3 tokenizer files (vocab.json + merges.txt or tokenizer.json). "
            "The package ships one in hdm_core/tokenizer/qwen3; reinstall the package if it is missing"
        )
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "right"
    return tok


# --------------------------------------------------------------------------- weights
def find_te_prefix(keys: Mapping[str, Any] | Sequence[str]) -> str | None:
    """The prefix under which Qwen3 ``Qwen3Model`` keys live, or ``None`` when there are none."""
    keyset = set(keys)
    for prefix in TE_PREFIXES:
        if prefix + _SENTINEL in keyset and prefix + _LAYER_SENTINEL in keyset:
            return prefix
    for key in sorted(keyset):  # any other wrapper: trust the sentinel pair
        if key.endswith(_SENTINEL):
            prefix = key[: -len(_SENTINEL)]
            if prefix + _LAYER_SENTINEL in keyset:
                return prefix
    return None


def infer_qwen3_config(shapes: Mapping[str, Sequence[int]], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Architecture fields read off the tensor shapes of a prefix-free ``Qwen3Model`` state dict.

    Sizes (vocabulary, width, depth, heads, head size, MLP width) come from the shapes;
    what shapes cannot tell (RoPE θ, norm epsilon, max positions) comes from ``base``
    (default: the bundled Qwen3-0.6B config).
    """

    def shape(key: str) -> list[int]:
        if key not in shapes:
            raise CheckpointError(f"cannot read the Qwen3 architecture: tensor '{key}' is missing from the file")
        return list(shapes[key])

    cfg = dict(base if base is not None else qwen3_config_dict())
    vocab, hidden = shape("embed_tokens.weight")
    layers = 0
    while f"layers.{layers}.self_attn.q_proj.weight" in shapes:
        layers += 1
    head_dim = shape("layers.0.self_attn.q_norm.weight")[0]
    q_out = shape("layers.0.self_attn.q_proj.weight")[0]
    k_out = shape("layers.0.self_attn.k_proj.weight")[0]
    if q_out % head_dim or k_out % head_dim:
        raise CheckpointError(f"Qwen3 projection sizes {q_out}/{k_out} are not multiples of the head size {head_dim}")
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        head_dim=head_dim,
        num_attention_heads=q_out // head_dim,
        num_key_value_heads=k_out // head_dim,
        intermediate_size=shape("layers.0.mlp.gate_proj.weight")[0],
        attention_bias="layers.0.self_attn.q_proj.bias" in shapes,
    )
    return cfg


def _folder_config(source: Any) -> dict[str, Any] | None:
    """A Hugging Face ``config.json`` next to the weights, if there is one."""
    if isinstance(source, Mapping):
        return None
    path = Path(source).expanduser()
    folder = path if path.is_dir() else path.parent
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from exc
    if cfg.get("model_type") not in (None, "qwen3"):
        return None  # some other model's config in the same folder: ignore it
    return cfg


def load_qwen3(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
):
    """Load a ``transformers.Qwen3Model`` (eval mode) from local weights.

    ``source`` is a ``.safetensors`` file, a Hugging Face folder (single file or shards
    with an index) or a state dict, in any layout of :data:`TE_PREFIXES` (HF
    ``Qwen3ForCausalLM`` files, bare ``Qwen3Model`` files, an HDM trainer checkpoint's
    ``te.text_models.0.*``). The architecture is read off the shapes (so smaller Qwen3s
    load too), with RoPE/norm constants from ``config``, a ``config.json`` next to the
    weights, or the bundled Qwen3-0.6B config. Loading is strict. ``dtype`` defaults to
    the file's own.
    """
    from transformers import Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    sd = read_state_dict(source, allow_pickle=allow_pickle)
    prefix = find_te_prefix(sd)
    if prefix is None:
        where = f"{source}: " if not isinstance(source, Mapping) else ""
        raise CheckpointError(
            f"{where}no Qwen3 text-encoder weights found; {describe_state_dict(list(sd))}. "
            f"HDM uses {QWEN3_REPO} (model.safetensors + config.json from https://huggingface.co/{QWEN3_REPO})"
        )
    names = {k[len(prefix):]: k for k in sd if k.startswith(prefix) and not k[len(prefix):].endswith(_IGNORED_SUFFIXES)}
    if prefix == "":  # a bare file may hold other models' keys too; keep what looks like Qwen3
        names = {k: v for k, v in names.items() if k.startswith(("embed_tokens.", "layers.", "norm."))}
    all_shapes = _shapes(sd)
    shapes = {short: all_shapes[full] for short, full in names.items()}
    base = dict(config) if config is not None else (_folder_config(source) or qwen3_config_dict())
    cfg = make_qwen3_config(infer_qwen3_config(shapes, base))

    with torch.device("meta"):
        model = Qwen3Model(cfg)
    expected = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
    problems = key_diff(expected, shapes)
    if problems:
        raise CheckpointError(
            f"the Qwen3 text-encoder weights (prefix '{prefix}') do not match a Qwen3Model: {problems}. "
            f"The file is damaged or not {QWEN3_REPO}"
        )
    if dtype is None:
        dtype = _dominant_float_dtype([_file_dtype(sd, full) for full in names.values()])
    device = torch.device(device) if device is not None else torch.device("cpu")
    loaded = {short: sd[full].to(device=device, dtype=dtype) for short, full in names.items()}
    model.load_state_dict(loaded, strict=False, assign=True)
    # Rotary caches are non-persistent (never in files): rebuild them, in float32, on the device.
    with torch.device(device):
        model.rotary_emb = Qwen3RotaryEmbedding(config=cfg)
    model.config.dtype = dtype
    return model.eval().requires_grad_(False)


def has_text_encoder(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> bool:
    """True when ``source`` holds Qwen3 weights (e.g. an HDM trainer checkpoint with ``te.*``)."""
    try:
        return find_te_prefix(read_state_dict(source)) is not None
    except CheckpointError:
        return False


def download_qwen3(local_dir: str | os.PathLike) -> Path:
    """Fetch ``Qwen/Qwen3-0.6B`` (weights + config only) into ``local_dir``; opt-in, needs the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError("downloading needs the huggingface_hub package: pip install huggingface_hub") from exc
    patterns = ["model*.safetensors", "model.safetensors.index.json", "config.json"]
    path = snapshot_download(QWEN3_REPO, local_dir=str(local_dir), allow_patterns=patterns)
    return Path(path)


# --------------------------------------------------------------------------- encoding
class TextEncoder:
    """Qwen3-0.6B + tokenizer with HDM's encoding rules (see the module docstring)."""

    def __init__(self, model, tokenizer=None) -> None:
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()

    @classmethod
    def from_file(
        cls,
        source: str | os.PathLike | Mapping[str, torch.Tensor],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        tokenizer_path: str | os.PathLike | None = None,
    ) -> "TextEncoder":
        return cls(load_qwen3(source, dtype, device, config=config), load_tokenizer(tokenizer_path))

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def tokenize(
        self, prompts: str | Sequence[str], max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` ``[B, T]``, right-padded with ``<|endoftext|>``, no specials.

        ``max_length=None`` (inference): padded to the longest prompt, never truncated.
        ``max_length=N`` (HDM's training, N = :data:`TRAIN_MAX_TOKENS`): every prompt
        truncated to N tokens and padded to exactly N, so ``T = N`` for any batch.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not len(prompts):
            raise ValueError("tokenize() needs at least one prompt")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (HDM's training used {TRAIN_MAX_TOKENS}), got {max_length}")
        if max_length is None:
            kwargs: dict[str, Any] = {"padding": "longest", "truncation": False}
        else:
            kwargs = {"padding": "max_length", "truncation": True, "max_length": max_length}
        out = self.tokenizer(list(prompts), add_special_tokens=False, return_tensors="pt", **kwargs)
        ids, mask = out["input_ids"], out["attention_mask"]
        if ids.ndim == 1 or ids.numel() == 0:  # every prompt empty: zero tokens
            ids = torch.zeros(len(prompts), 0, dtype=torch.long)
            mask = torch.zeros(len(prompts), 0, dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state ``[B, T, hidden]`` for token ids (``T = 0`` gives an empty tensor)."""
        b, t = input_ids.shape
        if t == 0:
            return torch.zeros(b, 0, self.hidden_size, device=self.device, dtype=self.dtype)
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def encode(self, prompts: str | Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """HDM context for a list of prompts: ``[B, T, hidden]``, pads included (the XUT sees them unmasked).

        ``max_length=None``: inference style, ``T`` = the longest prompt's length.
        ``max_length=TRAIN_MAX_TOKENS``: HDM's training encoding, ``T = 256`` always.
        """
        ids, mask = self.tokenize(prompts, max_length)
        return self.encode_tokens(ids, mask)

    def encode_each(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Inference-style contexts of several prompts at once: one ``[T_i, hidden]`` per prompt.

        Each holds only that prompt's own tokens — what encoding it alone gives (up to
        float rounding: with right padding and causal attention, pads never reach the real
        tokens) — so a batch of captions never leaks one caption's length into another.
        """
        ids, mask = self.tokenize(prompts)
        ctx = self.encode_tokens(ids, mask)
        lengths = mask.sum(dim=1).tolist()
        return [ctx[i, : int(n)] for i, n in enumerate(lengths)]

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        return self.encode(prompts)
