"""HDM's text encoder, Qwen3-0.6B, inside ComfyUI's CLIP object.

ComfyUI loads, casts and offloads it like any text encoder. The network is ComfyUI's own
Qwen3-0.6B (``comfy.text_encoders.llama.Qwen3_06B``, v0.33 and later) when the running
ComfyUI has it, otherwise the pack's definition on ComfyUI's ``Llama2_`` (which supports
Qwen3's q/k norms since 0.3.63). The tokenizer is ComfyUI's bundled Qwen tokenizer
(``qwen25_tokenizer``, the same vocabulary and merges as Qwen3's). Nothing is downloaded.

Encoding follows the HDM reference: no start/end tokens, no chat template, the last hidden
state after the final norm, each prompt encoded on its own. ComfyUI pads an empty prompt to
one pad token; the pad is trimmed so ``""`` gives **zero** text tokens (``[1, 0, 1024]``), as
in the reference. The encoder runs without attention masks (a single prompt holds no
padding), which also gives ComfyUI's prompt weighting a well-defined "empty" reference: the
plain encoding of pad tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.llama as comfy_llama

log = logging.getLogger(__name__)

TE_NAME = "qwen3_06b"
#: Where the Qwen3 weights live inside the CLIP model's state dict.
COMFY_TE_PREFIX = f"{TE_NAME}.transformer.model."
#: Where HDM trainer checkpoints keep them (HF ``Qwen3Model`` keys, no ``model.``).
TRAINER_TE_PREFIX = "te.text_models.0."
PAD_TOKEN = 151643  # <|endoftext|>, what HDM padded with
#: Keys of a Qwen3 file that are not part of the encoder (tied LM head, rotary caches).
IGNORED_TE_SUFFIXES = ("lm_head.weight", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")

QWEN3_HELP = (
    "HDM needs the Qwen3-0.6B text encoder: download model.safetensors from "
    "https://huggingface.co/Qwen/Qwen3-0.6B (the post-trained Qwen3-0.6B, not -Base), put it in "
    "ComfyUI/models/text_encoders/ (for example as qwen3-0.6b.safetensors), then select it in the "
    "text_encoder input of HDM Checkpoint Loader or in HDM Text Encoder Loader"
)


class TextEncoderError(ValueError):
    """A text-encoder file that cannot be used, with what to do about it."""


# ----------------------------------------------------------------------------- configuration
@dataclass
class Qwen3Config:
    """Qwen3 architecture for ComfyUI's ``Llama2_`` (defaults: Qwen3-0.6B).

    The pack's fallback for ComfyUI versions without ``Qwen3_06BConfig``; also carries the
    shapes read off a checkpoint. ``head_dim`` is a field here (a class constant upstream).
    """

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    transformer_type: str = "llama"
    rms_norm_add: bool = False
    mlp_activation: str = "silu"
    qkv_bias: bool = False
    rope_dims: Any = None
    q_norm: str = "gemma3"
    k_norm: str = "gemma3"
    rope_scale: Any = None
    sliding_attention: Any = None
    final_norm: bool = True
    lm_head: bool = False
    stop_tokens: Any = (151643, 151645)


#: Fields read off the weights; everything else is Qwen3's fixed recipe.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def native_qwen3_class():
    """ComfyUI's own Qwen3-0.6B class and config when this ComfyUI has them, else ``None``."""
    cls = getattr(comfy_llama, "Qwen3_06B", None)
    cfg = getattr(comfy_llama, "Qwen3_06BConfig", None)
    if cls is None or cfg is None:
        return None
    return cls, cfg


class Qwen3TextModel(comfy_llama.BaseLlama, torch.nn.Module):
    """Qwen3 on ComfyUI's ``Llama2_`` (the fallback for ComfyUI without ``Qwen3_06B``)."""

    def __init__(self, config_dict: dict, dtype, device, operations) -> None:
        super().__init__()
        config = Qwen3Config(**config_dict)
        self.num_layers = config.num_hidden_layers
        self.model = comfy_llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.dtype = dtype


def pick_model_class(config: Qwen3Config, force_fallback: bool = False) -> tuple[type, dict]:
    """``(model_class, config_dict)``: ComfyUI's Qwen3-0.6B where it can hold ``config``."""
    native = None if force_fallback else native_qwen3_class()
    if native is not None:
        cls, cfg_cls = native
        names = {f.name for f in fields(cfg_cls)}
        # The native config fixes head_dim (a class constant); use it only when it agrees.
        if getattr(cfg_cls, "head_dim", None) == config.head_dim:
            return cls, {k: getattr(config, k) for k in SHAPE_FIELDS if k in names}
    return Qwen3TextModel, asdict(config)


# ----------------------------------------------------------------------------- state dicts
def find_qwen3_prefix(keys) -> str | None:
    """The prefix under which a Qwen3 encoder's keys sit (``""``, ``"model."`` …), or None."""
    keyset = set(keys)
    for key in sorted(keyset):
        if key.endswith("embed_tokens.weight"):
            prefix = key[: -len("embed_tokens.weight")]
            if prefix + "layers.0.self_attn.q_norm.weight" in keyset:
                return prefix
    return None


def looks_like_other_llm(keys) -> str | None:
    """A hint when the keys are a language model but not Qwen3 (no q/k norms)."""
    keys = list(keys)
    if any(k.endswith("embed_tokens.weight") for k in keys) and any(".self_attn.q_proj." in k for k in keys):
        if any(k.endswith("self_attn.q_proj.bias") for k in keys):
            return "it looks like a Qwen2/Qwen2.5 language model (q_proj has a bias, no q_norm), not Qwen3"
        return "it looks like a Llama-style language model without Qwen3's q/k norms, not Qwen3"
    return None


def qwen3_config_from_shapes(shapes: Mapping[str, list[int]], prefix: str = "") -> Qwen3Config:
    """Read the Qwen3 architecture off tensor shapes under ``prefix``."""

    def shape(name: str) -> list[int]:
        try:
            return list(shapes[prefix + name])
        except KeyError:
            raise TextEncoderError(f"not a complete Qwen3 text encoder: tensor '{prefix + name}' is missing") from None

    vocab, hidden = shape("embed_tokens.weight")
    head_dim = shape("layers.0.self_attn.q_norm.weight")[0]
    layers = 0
    while f"{prefix}layers.{layers}.self_attn.q_norm.weight" in shapes:
        layers += 1
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shape("layers.0.mlp.gate_proj.weight")[0],
        num_hidden_layers=layers,
        num_attention_heads=shape("layers.0.self_attn.q_proj.weight")[0] // head_dim,
        num_key_value_heads=shape("layers.0.self_attn.k_proj.weight")[0] // head_dim,
        head_dim=head_dim,
    )


def expected_te_keys(config: Qwen3Config) -> dict[str, list[int]]:
    """HF ``Qwen3Model`` key names (no prefix) and shapes for ``config``."""
    c = config
    out = {"embed_tokens.weight": [c.vocab_size, c.hidden_size], "norm.weight": [c.hidden_size]}
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    for i in range(c.num_hidden_layers):
        p = f"layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": [q, c.hidden_size],
                p + "self_attn.k_proj.weight": [kv, c.hidden_size],
                p + "self_attn.v_proj.weight": [kv, c.hidden_size],
                p + "self_attn.o_proj.weight": [c.hidden_size, q],
                p + "self_attn.q_norm.weight": [c.head_dim],
                p + "self_attn.k_norm.weight": [c.head_dim],
                p + "mlp.gate_proj.weight": [c.intermediate_size, c.hidden_size],
                p + "mlp.up_proj.weight": [c.intermediate_size, c.hidden_size],
                p + "mlp.down_proj.weight": [c.hidden_size, c.intermediate_size],
                p + "input_layernorm.weight": [c.hidden_size],
                p + "post_attention_layernorm.weight": [c.hidden_size],
            }
        )
    return out


@dataclass
class TextEncoderWeights:
    """A Qwen3 encoder found in a state dict: its architecture and ComfyUI-named tensors."""

    config: Qwen3Config
    state_dict: dict[str, torch.Tensor]
    source_prefix: str
    ignored: list[str]


def extract_text_encoder(sd: Mapping[str, torch.Tensor], what: str) -> TextEncoderWeights | None:
    """Take the Qwen3 encoder out of ``sd`` (any known layout), checked key by key.

    Returns ``None`` when ``sd`` holds no Qwen3 encoder. Raises :class:`TextEncoderError` when
    it holds a damaged or different one. ``what`` names the file in messages.
    """
    from ..hdm_core.checkpoint import key_diff

    prefix = find_qwen3_prefix(sd.keys())
    if prefix is None:
        return None
    shapes = {k: list(v.shape) for k, v in sd.items() if k.startswith(prefix)}
    config = qwen3_config_from_shapes(shapes, prefix)
    expected = expected_te_keys(config)
    got = {k[len(prefix):]: s for k, s in shapes.items()}
    ignored = sorted(k for k in got if k.endswith(IGNORED_TE_SUFFIXES))
    got = {k: s for k, s in got.items() if k not in ignored}
    problems = key_diff(expected, got)
    if problems:
        raise TextEncoderError(f"{what}: the Qwen3 text encoder in it (prefix '{prefix}') is damaged or not Qwen3: {problems}")
    state_dict = {COMFY_TE_PREFIX + k: sd[prefix + k] for k in expected}
    return TextEncoderWeights(config=config, state_dict=state_dict, source_prefix=prefix, ignored=ignored)


def clip_keys_to_trainer_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP state dict (``qwen3_06b.transformer.model.*``) → HDM trainer layout (``te.text_models.0.*``)."""
    return {
        TRAINER_TE_PREFIX + k[len(COMFY_TE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(COMFY_TE_PREFIX)
    }


# ----------------------------------------------------------------------------- tokenizer
def _qwen_tokenizer_path() -> str:
    return os.path.join(os.path.dirname(os.path.realpath(comfy_llama.__file__)), "qwen25_tokenizer")


class HDMQwen3Tokenizer(comfy.sd1_clip.SDTokenizer):
    """Qwen3 tokenizer as HDM used it: no start/end tokens, no truncation, pad 151643.

    Same settings as ComfyUI's ``anima.Qwen3Tokenizer`` (used instead when present); this
    copy serves ComfyUI versions without it.
    """

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 (ComfyUI's signature)
        from transformers import Qwen2Tokenizer

        super().__init__(
            tokenizer_path=_qwen_tokenizer_path(),
            pad_with_end=False,
            embedding_directory=embedding_directory,
            embedding_size=1024,
            embedding_key=TE_NAME,
            tokenizer_class=Qwen2Tokenizer,
            has_start_token=False,
            has_end_token=False,
            pad_to_max_length=False,
            max_length=99999999,
            min_length=1,
            pad_token=PAD_TOKEN,
            tokenizer_data=tokenizer_data,
        )


def _inner_tokenizer_class() -> type:
    try:
        from comfy.text_encoders.anima import Qwen3Tokenizer
    except ImportError:
        return HDMQwen3Tokenizer
    return Qwen3Tokenizer


class HDMTokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006
        super().__init__(
            embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, name=TE_NAME, tokenizer=_inner_tokenizer_class()
        )


# ----------------------------------------------------------------------------- encoder model
class HDMQwen3ClipModel(comfy.sd1_clip.SDClipModel):
    """Qwen3 as an ``SDClipModel``: last hidden state after the final norm, masks returned not applied."""

    def __init__(self, device="cpu", dtype=None, model_options={}, qwen3_config: Qwen3Config | None = None, force_fallback: bool = False):  # noqa: B006
        model_class, config_dict = pick_model_class(qwen3_config or Qwen3Config(), force_fallback)
        super().__init__(
            device=device,
            layer="last",
            layer_idx=None,
            textmodel_json_config=dict(config_dict),
            dtype=dtype,
            special_tokens={"pad": PAD_TOKEN},
            layer_norm_hidden_state=False,
            model_class=model_class,
            enable_attention_masks=False,
            return_attention_masks=True,
            model_options=model_options,
        )


class HDMTextEncoderModel(comfy.sd1_clip.SD1ClipModel):
    """ComfyUI text-encoder model for HDM: one Qwen3 named ``qwen3_06b``; pads trimmed from the output."""

    def __init__(self, device="cpu", dtype=None, model_options={}, qwen3_config: Qwen3Config | None = None, force_fallback: bool = False):  # noqa: B006
        super().__init__(
            device=device,
            dtype=dtype,
            model_options=model_options,
            name=TE_NAME,
            clip_model=HDMQwen3ClipModel,
            qwen3_config=qwen3_config,
            force_fallback=force_fallback,
        )

    def encode_token_weights(self, token_weight_pairs):
        out = super().encode_token_weights(token_weight_pairs)
        cond, pooled = out[0], out[1]
        extra = dict(out[2]) if len(out) > 2 else {}
        mask = extra.pop("attention_mask", None)
        if mask is not None:
            keep = mask.reshape(-1).to(torch.bool)
            if keep.numel() == cond.shape[1] and not bool(keep.all()):
                cond = cond[:, keep.to(cond.device)]
        if extra:
            return cond, pooled, extra
        return cond, pooled


def clip_target(config: Qwen3Config, force_fallback: bool = False) -> comfy.supported_models_base.ClipTarget:
    """``ClipTarget`` that ``comfy.sd.CLIP`` builds HDM's text encoder from."""
    target = comfy.supported_models_base.ClipTarget(HDMTokenizer, HDMTextEncoderModel)
    target.params["qwen3_config"] = config
    if force_fallback:
        target.params["force_fallback"] = True
    return target


__all__ = [
    "COMFY_TE_PREFIX",
    "HDMTextEncoderModel",
    "HDMTokenizer",
    "PAD_TOKEN",
    "QWEN3_HELP",
    "Qwen3Config",
    "TextEncoderError",
    "TextEncoderWeights",
    "clip_keys_to_trainer_layout",
    "clip_target",
    "expected_te_keys",
    "extract_text_encoder",
    "find_qwen3_prefix",
    "looks_like_other_llm",
    "native_qwen3_class",
    "qwen3_config_from_shapes",
]
