"""HDM prompt layout: the user's prompt sorted into danbooru categories and written out from a template.

Pure functions over plain data (the tag classifier is passed in), so the exact output can be
pinned in tests. A prompt is held as a *category map*: lists of literal tags per category
(``special``, ``characters``, ``copyrights``, ``artist``, ``general``, ``quality``, ``rating``,
``meta``) plus the natural-language parts ``extended`` (the user's text, extended by TIPO) and
``generated`` (text TIPO wrote from scratch). Templates name them as ``<|general|>`` etc.,
the placeholders tipo-kgen and z-tipo-extension use, so existing templates keep working.

Escaping happens per item while writing (``hdm_core.brackets``): literal tags and text get
every bracket escaped, the user's weighted tags come back as ``(tag:weight)`` exactly as
written, ``BREAK`` stays where the user put it (after the tag before it), and the template's
own text is copied as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..brackets import BREAK, Piece, Tag, escape_literal, parse_weights, reweight_text, split_tags
from .errors import TipoError

TAG_CATEGORIES = ("special", "characters", "copyrights", "artist", "general", "quality", "rating", "meta")
NL_CATEGORIES = ("extended", "generated")
PLACEHOLDERS = TAG_CATEGORIES + NL_CATEGORIES

#: HDM's layout: who (special, characters, copyrights, artist), what (general tags), the
#: natural-language description, then quality / rating / meta tags.
HDM_TEMPLATE = "<|special|>,\n<|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|general|>,\n\n<|extended|>.\n\n<|quality|>, <|rating|>, <|meta|>"

_PLACEHOLDER = re.compile(r"<\|([A-Za-z_]+)\|>")
_SENTENCE_END = (".", "!", "?")

Classifier = Callable[[str], "tuple[str, str]"]


@dataclass
class UserPrompt:
    """The user's input: tags (with weights and BREAKs), natural language, and each tag's category."""

    tags: list[Tag]
    nl: list[Piece]
    categories: dict[str, list[str]] = field(default_factory=dict)  # literal spellings per category
    by_spelling: dict[str, Tag] = field(default_factory=dict)  # classified spelling → the user's tag
    breaks_after: dict[str | None, int] = field(default_factory=dict)  # spelling (None: start) → BREAKs

    @property
    def nl_text(self) -> str:
        """The natural-language part as literal text (weights removed, brackets plain)."""
        return "".join(p.text for p in self.nl).strip()


def parse_user_prompt(tags: str, nl_prompt: str, classify: Classifier) -> UserPrompt:
    """Split and classify the user's tags; keep their weights, BREAKs and the natural-language text."""
    user = UserPrompt(tags=split_tags(tags), nl=parse_weights(nl_prompt))
    user.categories = {c: [] for c in TAG_CATEGORIES}
    previous: str | None = None
    for tag in user.tags:
        if tag.is_break:
            user.breaks_after[previous] = user.breaks_after.get(previous, 0) + 1
            continue
        category, spelling = classify(tag.text)
        if spelling in user.by_spelling:
            previous = spelling
            continue
        user.categories.setdefault(category, []).append(spelling)
        user.by_spelling[spelling] = tag
        previous = spelling
    return user


def merge_categories(user: UserPrompt, *results: Mapping[str, object]) -> dict[str, list[str] | str]:
    """The final category map: the user's tags first (never lost), then each result's, no duplicates.

    Tags come from every result (a TIPO run's tag pass finds characters and copyrights that
    its later passes do not repeat); natural language from the last result that has it.
    """
    merged: dict[str, list[str] | str] = {}
    seen: set[str] = set()
    for category in TAG_CATEGORIES:
        items = list(user.categories.get(category, []))
        seen.update(items)
        merged[category] = items
    for result in results:
        for category in TAG_CATEGORIES:
            value = result.get(category) or []
            for tag in value if isinstance(value, list) else []:
                tag = tag.strip()
                if tag and tag != BREAK and tag not in seen:
                    merged[category].append(tag)  # type: ignore[union-attr]
                    seen.add(tag)
    for key in NL_CATEGORIES:
        texts = [r.get(key) for r in results if isinstance(r.get(key), str) and r.get(key).strip()]  # type: ignore[union-attr]
        merged[key] = texts[-1].strip() if texts else ""
    return merged


def user_categories(user: UserPrompt) -> dict[str, list[str] | str]:
    """The category map of the user's prompt alone (formatting without a model)."""
    return merge_categories(user, {"extended": user.nl_text})


def render_items(categories: Mapping[str, list[str] | str], user: UserPrompt, escape: bool = True) -> dict[str, list[str] | str]:
    """Each tag and text as ComfyUI text: escaped (or not), user weights back, BREAKs in place."""
    rendered: dict[str, list[str] | str] = {}
    placed = 0
    first = next(iter(user.by_spelling), None)  # BREAKs before any tag stay before the first one
    for category in TAG_CATEGORIES:
        items: list[str] = []
        for spelling in categories.get(category, []) or []:
            if spelling == first and user.breaks_after.get(None):
                items.extend([BREAK] * user.breaks_after[None])
                placed += user.breaks_after[None]
            tag = user.by_spelling.get(spelling)
            if tag is not None and tag.weighted:
                items.append(tag.render(escape, text=spelling))
            else:
                items.append(escape_literal(spelling) if escape else spelling)
            if tag is not None and user.breaks_after.get(spelling):
                items.extend([BREAK] * user.breaks_after[spelling])
                placed += user.breaks_after[spelling]
        rendered[category] = items
    missing = sum(user.breaks_after.values()) - placed
    if missing > 0:  # the tag a BREAK followed is gone: keep the BREAK at the end of the general tags
        rendered["general"] = list(rendered["general"]) + [BREAK] * missing  # type: ignore[arg-type]
    for key in NL_CATEGORIES:
        text = categories.get(key) or ""
        rendered[key] = reweight_text(text, user.nl, escape) if isinstance(text, str) else ""
    return rendered


def check_template(template: str) -> None:
    """Reject unknown ``<|name|>`` placeholders (a typo would silently drop a whole category)."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(PLACEHOLDERS))
    if unknown:
        raise TipoError(
            f"unknown placeholder(s) in the format template: {', '.join(f'<|{u}|>' for u in unknown)}; "
            f"use {', '.join(f'<|{p}|>' for p in PLACEHOLDERS)}"
        )


def render_template(template: str, values: Mapping[str, list[str] | str]) -> str:
    """Fill ``template`` with ready-made ComfyUI text per placeholder.

    Lists are joined with ``", "``. An empty placeholder is removed together with the ``,``
    or ``.`` right after it; ``<|extended|>`` falls back to ``<|generated|>`` when empty;
    natural language that already ends a sentence does not get a second ``.``. Then spaces
    are tidied (no trailing spaces, no runs of spaces or of blank lines) and stray commas at
    the start and end removed. Everything else in the template is kept as written.
    """
    check_template(template)
    parts = _PLACEHOLDER.split(template)
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name, literal = parts[i], parts[i + 1]
        value = values.get(name) or ""
        if name == "extended" and not value:
            value = values.get("generated") or ""
        text = ", ".join(value) if isinstance(value, list) else value.strip()
        if not text:
            literal = re.sub(r"^[ \t]*[,.]", "", literal)
        elif name in NL_CATEGORIES and text.endswith(_SENTENCE_END) and literal.startswith("."):
            literal = literal[1:]
        out.append(text)
        out.append(literal)
    return tidy("".join(out))


def tidy(text: str) -> str:
    """Whitespace and comma clean-up after empty parts were removed."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n[ \t]+", "\n", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"^[\s,]+", "", text)
    text = re.sub(r"[\s,]+$", "", text)
    return text

