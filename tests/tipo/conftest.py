"""TIPO test doubles built offline, inside the fixtures.

* ``tipo_tokenizer_dir``: a SentencePiece BPE model trained here on a few TIPO-like lines
  (byte fallback, so any text round-trips), saved like the hub repos (``tokenizer.model`` +
  ``tokenizer_config.json`` with TIPO's 13 added special tokens, no ``tokenizer.json``).
* ``tiny_tipo_dir``: that tokenizer plus a random 2-layer ``LlamaForCausalLM`` whose config,
  like TIPO's, says ``use_cache: false``; it runs the whole real path (load, tokenise,
  generate, decode, parse) in about a second.
* ``CannedTipo``: a model whose ``generate`` appends canned TIPO text, so the exact output
  formatting can be pinned.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

TIPO_SPECIAL_TOKENS = [
    "<|empty|>", "<|very_short|>", "<|short|>", "<|long|>", "<|very_long|>", "<|tag_to_long|>", "<|long_to_tag|>",
    "<|short_to_tag|>", "<|short_to_long|>", "<|tag_to_short_to_long|>", "<|short_to_tag_to_long|>",
    "<|short_to_long_to_tag|>", "<|gen_meta|>",
]  # fmt: skip

_CORPUS = [
    "meta: absurdres, highres",
    "rating: general, sensitive",
    "artist: kita senri",
    "characters: izuna (blue archive), sensei (blue archive)",
    "copyrights: blue archive",
    "quality: masterpiece, best quality, newest",
    "aspect_ratio: 1.0",
    "target: long short tag",
    "tag: 1girl, solo, long hair, fox ears, smile, glasses, hair between eyes, looking at viewer, halo, watermark",
    "short: A girl smiling in a shrine.",
    "long: She wears glasses and a kimono. The sky is blue behind her.",
]


def write_tipo_tokenizer(folder: Path, vocab_size: int = 400) -> Path:
    """Train a throwaway SentencePiece tokenizer and save it the way TIPO's hub repos hold theirs."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 30),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    added = {
        str(vocab_size + i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
        for i, t in enumerate(TIPO_SPECIAL_TOKENS)
    }
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "added_tokens_decoder": added,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}))
    return folder


def write_tiny_tipo(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer LLaMA with a TIPO tokenizer, saved as a TIPO transformers folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    write_tipo_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        use_cache=False,  # as TIPO's hub config.json
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.use_cache = False
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tipo_tokenizer_dir(tmp_path_factory) -> Path:
    return write_tipo_tokenizer(tmp_path_factory.mktemp("tipo-tokenizer"))


@pytest.fixture(scope="session")
def tipo_tokenizer(tipo_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tipo_tokenizer_dir), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_tipo_dir(tmp_path_factory) -> Path:
    """``<tmp>/tipo/tiny-tipo``: a models/tipo folder holding one tiny TIPO model."""
    root = tmp_path_factory.mktemp("models") / "tipo"
    return write_tiny_tipo(root / "tiny-tipo")


class CannedTipo(torch.nn.Module):
    """Stands in for TIPO's LlamaForCausalLM: ``generate`` appends ``respond(prompt)`` to the prompt.

    ``respond`` gets the prompt text and a draw from the torch RNG (so seeds matter exactly
    as with sampling); every call is recorded, and ``stopping_criteria`` is called once per
    "token" like transformers does.
    """

    def __init__(self, tokenizer, respond: Callable[[str, int], str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.respond = respond
        self.calls: list[dict] = []
        self.config = type("Config", (), {"use_cache": False})()
        self.generation_config = type("GenerationConfig", (), {"use_cache": False})()

    def generate(self, input_ids, attention_mask=None, generation_config=None, stopping_criteria=None, **kwargs):
        prompt = self.tokenizer.decode(input_ids[0], skip_special_tokens=False)
        prompt = prompt.replace(self.tokenizer.bos_token, "", 1).lstrip()
        draw = int(torch.randint(0, 1000, (1,)))
        completion = self.respond(prompt, draw)
        self.calls.append({"prompt": prompt, "draw": draw, "config": generation_config, "completion": completion})
        ids = self.tokenizer(prompt + completion, return_tensors="pt")["input_ids"]
        for _ in range(3):
            if stopping_criteria is not None:
                for criterion in stopping_criteria:
                    criterion(ids, None)
        return ids


@pytest.fixture
def canned_backend(tipo_tokenizer):
    """``make(respond) -> (backend, model)``: a TransformersTipo over a CannedTipo."""
    from hdm_core.tipo.backends import TransformersTipo

    def make(respond: Callable[[str, int], str]):
        model = CannedTipo(tipo_tokenizer, respond)
        return TransformersTipo(model, tipo_tokenizer, torch.device("cpu"), name="canned"), model

    return make
