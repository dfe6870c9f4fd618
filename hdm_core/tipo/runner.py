"""TIPO prompt expansion: the user's prompt in, the HDM-layout prompt out.

The flow follows tipo-kgen's ``tipo_runner`` (same request planning, prompt format, retries
that feed the previous output back, post-processing), with our own loop so that:

* a seed always means the same prompt (kgen treats 0 as "random"; here every seed is a seed),
  and no global RNG is left changed (Python's ``random``, which kgen's shuffles use, is
  seeded and restored; generation seeds a forked torch RNG);
* a pass that misses the length target is retried up to ``max_retry`` times, and a result
  that still misses it is an error (or accepted, with ``require_length=False``);
* the user's tags are never dropped, banned or reordered, and their weights survive.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .backends import StepCallback, TipoBackend
from .errors import TipoError, TipoLengthError
from .kgen_api import ban_matcher, classify_tag, load_kgen, parse_result, post_process
from .loader import load_tipo, resolve_model
from .prompt import HDM_TEMPLATE, TAG_CATEGORIES, UserPrompt, check_template, merge_categories, parse_user_prompt, render_items, render_template, user_categories

LENGTHS = ("very_short", "short", "long", "very_long")
_random_lock = threading.Lock()


@dataclass(frozen=True)
class TipoSettings:
    """Generation settings; defaults as in z-tipo-extension, lengths as HDM's own UI (long tags, short NL)."""

    tag_length: str = "long"
    nl_length: str = "short"
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80
    min_p: float = 0.05
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512
    max_retry: int = 3
    width: int = 1024
    height: int = 1024
    ban_tags: str = ""
    require_length: bool = True

    def sampling(self) -> dict[str, float | int]:
        """The keyword arguments of ``TipoBackend.generate`` besides prompt, seed and callback."""
        return dict(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
        )

    def check(self) -> None:
        for name in ("tag_length", "nl_length"):
            if getattr(self, name) not in LENGTHS:
                raise TipoError(f"{name} '{getattr(self, name)}' is not one of {', '.join(LENGTHS)}")
        if not self.temperature > 0:
            raise TipoError(f"temperature must be above 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1:
            raise TipoError(f"top_p must be in (0, 1] and min_p in [0, 1) (got {self.top_p}, {self.min_p})")
        if self.top_k < 0 or self.max_retry < 0 or self.max_new_tokens < 2:
            raise TipoError("top_k and max_retry must be 0 or more, max_new_tokens at least 2")
        if self.width <= 0 or self.height <= 0:
            raise TipoError(f"width and height must be positive (got {self.width}x{self.height})")


@dataclass
class TipoPass:
    """One generation pass: what was asked, with which seed, and what came back."""

    mode: str | None
    length: str
    seed: int
    prompt: str
    output: str
    unit: str  # "tags" or "sentences"
    count: int
    target: int
    prompt_tokens: int = 0
    new_tokens: int = 0


@dataclass
class TipoResult:
    """The expanded prompt (escaped for ComfyUI unless asked not to), the same unescaped, and the category map."""

    prompt: str
    prompt_unescaped: str
    categories: dict[str, list[str] | str]
    seed: int | None = None
    passes: list[TipoPass] = field(default_factory=list)


def _finish(categories: dict, user: UserPrompt, template: str, escape: bool, seed: int | None, passes: list) -> TipoResult:
    plain = render_items(categories, user, escape=False)
    unescaped = render_template(template, plain)
    prompt = render_template(template, render_items(categories, user, escape=True)) if escape else unescaped
    return TipoResult(prompt=prompt, prompt_unescaped=unescaped, categories=plain, seed=seed, passes=passes)


def format_only(tags: str, nl_prompt: str = "", *, template: str = HDM_TEMPLATE, escape: bool = True) -> TipoResult:
    """Sort the user's tags into the HDM layout and escape them, without a model."""
    check_template(template)
    user = parse_user_prompt(tags, nl_prompt, classify_tag)
    return _finish(user_categories(user), user, template, escape, None, [])


@contextmanager
def _seeded_python_random(seed: int):
    """kgen shuffles new tags with the global ``random``: seed it for this run, then put it back."""
    with _random_lock:
        state = random.getstate()
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def _measure(parsed: dict[str, Any], mode: str | None, length: str, metainfo) -> tuple[str, int, int]:
    """What this pass had to produce: ``(unit, count, minimum)``."""
    if mode is None or mode.endswith("tag"):
        return "tags", len(parsed.get("special", []) + parsed.get("general", [])), metainfo.TARGET_TIPO[length]
    key = "generated" if mode.endswith("long") and parsed.get("generated") else "extended"
    text = parsed.get(key) or ""
    sentences = [s for s in text.split(".") if s.strip()] if isinstance(text, str) else []
    return "sentences", len(sentences), metainfo.TARGET_TIPO_NL[length]


def expand(
    backend: TipoBackend,
    tags: str,
    nl_prompt: str = "",
    *,
    seed: int,
    settings: TipoSettings = TipoSettings(),
    template: str = HDM_TEMPLATE,
    escape: bool = True,
    on_step: StepCallback | None = None,
) -> TipoResult:
    """Expand ``tags`` / ``nl_prompt`` with a loaded TIPO model; the same seed gives the same prompt.

    Natural language is generated when the template asks for ``<|generated|>``, or for
    ``<|extended|>`` while no natural language was given. ``on_step`` runs after every
    generated token (raise in it to abort).
    """
    settings.check()
    check_template(template)
    if seed < 0:
        raise TipoError(f"seed must be 0 or more (got {seed})")
    kgen = load_kgen()
    user = parse_user_prompt(tags, nl_prompt, classify_tag)
    nl = user.nl_text
    tag_map = {c: list(user.categories.get(c, [])) for c in TAG_CATEGORIES}
    extra_nl = "<|generated|>" in template or (not nl and "<|extended|>" in template)
    meta, operations, general, nl = kgen.tipo.parse_tipo_request(
        tag_map,
        nl,
        tag_length_target=settings.tag_length,
        nl_length_target=settings.nl_length,
        generate_extra_nl_prompt=extra_nl,
    )
    meta["aspect_ratio"] = f"{settings.width / settings.height:.1f}"
    banned = ban_matcher(settings.ban_tags)
    passes: list[TipoPass] = []
    shortfalls: list[TipoPass] = []
    parsed: dict[str, Any] = {}
    results: list[dict[str, Any]] = []  # each operation's final pass
    with _seeded_python_random(seed):
        for index, (mode, length, expand_input) in enumerate(operations):
            for attempt in range(settings.max_retry + 1):
                prompt = kgen.tipo.apply_tipo_prompt(meta, general, nl, mode, length, expand_input, False)
                pass_seed = seed + attempt
                output, n_prompt, n_new = backend.generate(prompt, seed=pass_seed, on_step=on_step, **settings.sampling())
                parsed = post_process(parse_result(output), general, nl, mode, length, banned)
                unit, count, target = _measure(parsed, mode, length, kgen.metainfo)
                record = TipoPass(mode, length, pass_seed, prompt, output, unit, count, target, n_prompt, n_new)
                passes.append(record)
                if count >= target:
                    break
                # as kgen does: the next try continues from what this one wrote
                nl = (parsed.get("extended") or parsed.get("generated") or nl).strip()
                general = ", ".join(parsed.get("special", []) + parsed.get("general", []))
            else:
                shortfalls.append(record)
            results.append(dict(parsed))
            if index < len(operations) - 1:
                if "generated" in parsed and nl:
                    parsed["extended"] = parsed.pop("generated")
                nl = (parsed.get("generated") or parsed.get("extended") or nl).strip()
                general = ", ".join(parsed.get("special", []) + parsed.get("general", []))
    if shortfalls and settings.require_length:
        worst = shortfalls[0]
        which = "tag_length" if worst.unit == "tags" else "nl_length"
        raise TipoLengthError(
            f"TIPO wrote {worst.count} {worst.unit} where {which}='{worst.length}' asks for at least {worst.target}, "
            f"after {settings.max_retry + 1} attempt(s) (max_retry={settings.max_retry}). Raise max_retry, choose a "
            f"shorter {which}, try another seed, or switch the length check off to accept shorter output."
        )
    return _finish(merge_categories(user, *results), user, template, escape, seed, passes)


def expand_prompt(
    tags: str,
    nl_prompt: str = "",
    *,
    model: str | os.PathLike,
    seed: int,
    model_dirs: Iterable[str | os.PathLike] = (),
    device: str = "auto",
    dtype: str | None = None,
    settings: TipoSettings = TipoSettings(),
    template: str = HDM_TEMPLATE,
    escape: bool = True,
) -> str:
    """One call for headless use (``generate --tipo``): load the model, expand, return the prompt.

    ``model`` is a name found in ``model_dirs`` or a path to a TIPO folder / ``.gguf`` file.
    ``escape=True`` writes ComfyUI syntax (literal brackets as ``\\(``); pass ``False`` when
    the prompt goes to an encoder that does not read prompt weights.
    """
    backend = load_tipo(resolve_model(model, list(model_dirs)), device=device, dtype=dtype)
    return expand(backend, tags, nl_prompt, seed=seed, settings=settings, template=template, escape=escape).prompt
