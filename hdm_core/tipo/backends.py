"""Text generation for TIPO: transformers models and llama.cpp GGUF files, seeded and side-effect free.

Both backends take a prompt in TIPO's format and return the prompt followed by the model's
continuation, as tipo-kgen's parser expects. Compared with tipo-kgen's own ``generate``:
the KV cache is always on (TIPO's shipped configs switch it off, ~5× slower), the model keeps
the dtype it was loaded in (fp32/bf16 on CPU), and the seed is applied to a forked RNG so the
caller's global random state is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

StepCallback = Callable[[], None]


class TipoBackend(Protocol):
    kind: str
    name: str

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        on_step: StepCallback | None = None,
    ) -> tuple[str, int, int]:
        """``(prompt + continuation, prompt tokens, new tokens)``; the same seed gives the same text."""
        ...


class TransformersTipo:
    """A TIPO ``LlamaForCausalLM`` with its tokenizer, optionally parked on ``offload_device`` between runs."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, name: str = "", offload_device: torch.device | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.name = name
        model.generation_config.use_cache = True
        model.config.use_cache = True

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        on_step: StepCallback | None = None,
    ) -> tuple[str, int, int]:
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        class _Step(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002 - transformers' signature
                on_step()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        encoded = self.tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded.get("attention_mask")
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        eos = self.tokenizer.eos_token_id
        config = GenerationConfig(
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p if min_p > 0 else None,
            repetition_penalty=repetition_penalty,
            max_new_tokens=max_new_tokens,
            min_new_tokens=2,
            use_cache=True,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
        )
        if self.offload_device is not None and self.offload_device != self.device:
            self.model.to(self.device)
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.inference_mode():
                torch.random.default_generator.manual_seed(seed % 2**64)
                if cuda:
                    with torch.cuda.device(cuda[0]):
                        torch.cuda.manual_seed(seed % 2**64)
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([_Step()]) if on_step else None,
                )
        finally:
            if self.offload_device is not None and self.offload_device != self.device:
                self.model.to(self.offload_device)
        ids = output[0].tolist()
        n_prompt = input_ids.shape[1]
        return self.tokenizer.decode(ids, skip_special_tokens=False), n_prompt, len(ids) - n_prompt


class LlamaCppTipo:
    """A TIPO ``.gguf`` file run by llama-cpp-python (its KV cache is always on; CPU runs are reproducible)."""

    kind = "gguf"

    def __init__(self, llama: Any, llama_cpp_module: Any, name: str = ""):
        self.llama = llama
        self._llama_cpp = llama_cpp_module
        self.name = name

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
        on_step: StepCallback | None = None,
    ) -> tuple[str, int, int]:
        stopping = None
        if on_step is not None:

            def step(input_ids, logits):  # noqa: ARG001 - llama_cpp's signature
                on_step()
                return False

            stopping = self._llama_cpp.StoppingCriteriaList([step])
        result = self.llama.create_completion(
            prompt,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repetition_penalty,
            seed=seed % 2**32,
            stopping_criteria=stopping,
        )
        usage = result.get("usage", {})
        return prompt + result["choices"][0]["text"], usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
