"""Bracket escaping between danbooru tags and ComfyUI's prompt-weight syntax.

ComfyUI reads ``(text)`` as emphasis (×1.1) and ``(text:1.2)`` as an explicit weight; only
``\\(`` and ``\\)`` are literal brackets. Danbooru tags carry brackets of their own
(``izuna (blue archive)``), so an HDM prompt pasted into a stock text node silently turns
series names into weights. This module is the one place that converts between the two:

* :func:`escape_brackets` — every unescaped bracket becomes literal (never double-escaped).
* :func:`unescape_brackets` — ``\\(`` / ``\\)`` back to plain brackets; nothing else changes.
* :func:`escape_danbooru` — bare brackets become literal, while explicit weight groups
  ``(tag:1.2)`` stay weights (with any brackets inside them made literal).
* :func:`escape_literal` — for text that is known to hold no prompt syntax at all (text that
  went through :func:`unescape_brackets`, or words a language model wrote): *every* bracket
  gets a backslash, so ComfyUI reads back exactly that text. ``escape_literal`` after
  ``unescape_brackets`` is the never-double-escaping pipeline: applying it twice changes nothing.
* :func:`weight_group_spans` / :func:`split_weight` — where the explicit weight groups are and
  what their text and weight are, for code that has to keep user weights while rewriting tags.
* :func:`parse_weights`, :func:`split_tags`, :func:`render_pieces`, :func:`reweight_text` —
  a prompt as literal text plus the user's explicit weights, and the way back, for tools that
  rewrite prompts (the TIPO prompt expander): tags keep their brackets as one tag, weights stay
  as written, ``BREAK`` and other backslashes pass through.

A bracket counts as escaped when a backslash stands right before it, which is how ComfyUI's
parser (``escape_important``) sees it; every other backslash passes through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNESCAPED = re.compile(r"(?<!\\)([()])")


def escape_brackets(text: str) -> str:
    """Make every bracket literal for ComfyUI: ``(`` → ``\\(``, ``)`` → ``\\)``, idempotent."""
    return _UNESCAPED.sub(r"\\\1", text)


def unescape_brackets(text: str) -> str:
    """Turn ``\\(`` and ``\\)`` back into plain brackets; other backslashes are kept."""
    return text.replace("\\(", "(").replace("\\)", ")")


def escape_literal(text: str) -> str:
    """Escape every bracket of literal text: ComfyUI then reads exactly ``text`` at weight 1.0.

    Unlike :func:`escape_brackets` this does not treat ``\\(`` as already escaped: a
    backslash in literal text is a backslash (``a\\(`` becomes ``a\\\\(``, which ComfyUI reads
    as ``a\\(``). Use it on text that holds no prompt syntax, e.g. after :func:`unescape_brackets`.
    """
    return text.replace("(", "\\(").replace(")", "\\)")


def is_weight_group(content: str) -> bool:
    """ComfyUI's rule for ``(content)``: an explicit weight iff the text after the last ``:`` is a float."""
    colon = content.rfind(":")
    if colon <= 0:
        return False
    try:
        float(content[colon + 1 :])
    except ValueError:
        return False
    return True


def split_weight(content: str) -> tuple[str, str]:
    """``"izuna (blue archive):1.2"`` → ``("izuna (blue archive)", "1.2")``, the weight as written.

    ``content`` is the inside of a group for which :func:`is_weight_group` holds.
    """
    text, _, weight = content.rpartition(":")
    return text, weight


def _bracket_pairs(text: str) -> dict[int, int]:
    """Open → close index of the unescaped brackets, matched with a stack; unmatched ones are absent."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _UNESCAPED.finditer(text):
        i = m.start()
        if text[i] == "(":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    return pairs


def weight_group_spans(text: str, outermost: bool = True) -> list[tuple[int, int]]:
    """``(open, close)`` indices of the explicit weight groups ``(text:1.2)`` in ``text``, in order.

    The same groups :func:`escape_danbooru` keeps as weights. With ``outermost`` only groups
    that are not inside another weight group are listed (nested ones override the weight of
    their part in ComfyUI, and callers that split a prompt must not split inside a group).
    """
    spans = sorted(
        (o, c) for o, c in _bracket_pairs(text).items() if is_weight_group(text[o + 1 : c])
    )
    if not outermost:
        return spans
    out: list[tuple[int, int]] = []
    for o, c in spans:
        if not out or o > out[-1][1]:
            out.append((o, c))
    return out


def escape_danbooru(text: str) -> str:
    """Escape bare brackets but keep explicit weights: ``(a (b):1.2) c (d)`` → ``(a \\(b\\):1.2) c \\(d\\)``."""
    keep: set[int] = set()
    for open_i, close_i in weight_group_spans(text, outermost=False):
        keep.update((open_i, close_i))
    out = []
    last = 0
    for m in _UNESCAPED.finditer(text):
        i = m.start()
        out.append(text[last:i])
        out.append(text[i] if i in keep else "\\" + text[i])
        last = i + 1
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------- weighted prompts
# Prompt tools that rewrite a prompt (reorder tags, let a language model extend it) need the
# prompt as *literal* text plus the user's explicit weights, and must write it back so that
# ComfyUI reads the same thing. Bare brackets are literal here, as in escape_danbooru: only
# ``(text:number)`` is a weight; ``(text)`` emphasis is not recognised (it is how danbooru
# writes series names).

BREAK = "BREAK"
_BREAK_WORD = re.compile(r"(?<!\S)BREAK(?!\S)")
_TAG_SEPARATOR = re.compile(r"[,\n]")


@dataclass(frozen=True)
class Piece:
    """A run of literal text (brackets plain, no escapes) with the user's weight as written."""

    text: str
    weight: str | None = None  # None: plain text at weight 1.0

    def render(self, escape: bool = True) -> str:
        """ComfyUI text for this run: escaped for ComfyUI, or the plain unescaped form."""
        text = escape_literal(self.text) if escape else self.text
        return text if self.weight is None else f"({text}:{self.weight})"


def parse_weights(text: str, weight: str | None = None) -> list[Piece]:
    """Split ComfyUI prompt text into literal runs and explicit weight groups.

    ``\\(`` / ``\\)`` become plain brackets, bare brackets stay literal, ``(a:1.2)`` becomes
    ``Piece("a", "1.2")``; a group inside a group keeps its own weight, as ComfyUI reads it.
    Adjacent runs with the same weight are merged, empty runs dropped. ``render_pieces`` is
    the way back.
    """
    pieces: list[Piece] = []

    def add(piece: Piece) -> None:
        if not piece.text:
            return
        if pieces and pieces[-1].weight == piece.weight:
            pieces[-1] = Piece(pieces[-1].text + piece.text, piece.weight)
        else:
            pieces.append(piece)

    last = 0
    for open_i, close_i in weight_group_spans(text):
        add(Piece(unescape_brackets(text[last:open_i]), weight))
        content, inner_weight = split_weight(text[open_i + 1 : close_i])
        for piece in parse_weights(content, inner_weight):
            add(piece)
        last = close_i + 1
    add(Piece(unescape_brackets(text[last:]), weight))
    return pieces


def render_pieces(pieces: list[Piece] | tuple[Piece, ...], escape: bool = True) -> str:
    """Join pieces back into ComfyUI text (``escape=False``: the same text without escapes)."""
    return "".join(p.render(escape) for p in pieces)


@dataclass(frozen=True)
class Tag:
    """One comma-separated item of a tag prompt: its pieces (usually exactly one)."""

    pieces: tuple[Piece, ...]

    @property
    def text(self) -> str:
        """The literal tag, weights removed: what a tagger or language model should see."""
        return "".join(p.text for p in self.pieces)

    @property
    def is_break(self) -> bool:
        return len(self.pieces) == 1 and self.pieces[0].weight is None and self.pieces[0].text == BREAK

    @property
    def weighted(self) -> bool:
        return any(p.weight is not None for p in self.pieces)

    def render(self, escape: bool = True, text: str | None = None) -> str:
        """ComfyUI text of the tag; ``text`` replaces the literal of a single-piece tag (a normalised spelling)."""
        if text is not None and len(self.pieces) == 1:
            return Piece(text, self.pieces[0].weight).render(escape)
        return render_pieces(self.pieces, escape)


def split_tags(text: str) -> list[Tag]:
    """Comma/newline-separated tags, with weights kept and brackets literal.

    * ``izuna \\(blue archive\\)`` and ``izuna (blue archive)`` are both the one tag
      ``izuna (blue archive)``;
    * ``(smile:1.2)`` is the tag ``smile`` at weight ``1.2`` (written back verbatim), and a
      group around several tags, ``(smile, blush:1.2)``, gives each of them that weight;
    * ``BREAK`` (as its own item, or between words) is a :data:`BREAK` tag of its own;
    * other backslashes pass through untouched.
    """
    tags: list[Tag] = []
    current: list[Piece] = []

    def flush() -> None:
        pieces = list(current)
        current.clear()
        while pieces and not pieces[0].text.strip():
            pieces.pop(0)
        while pieces and not pieces[-1].text.strip():
            pieces.pop()
        if not pieces:
            return
        pieces[0] = Piece(pieces[0].text.lstrip(), pieces[0].weight)
        pieces[-1] = Piece(pieces[-1].text.rstrip(), pieces[-1].weight)
        tags.append(Tag(tuple(pieces)))

    for piece in parse_weights(text):
        for i, part in enumerate(_TAG_SEPARATOR.split(piece.text)):
            if i:
                flush()
            if piece.weight is None:
                for j, word_run in enumerate(_BREAK_WORD.split(part)):
                    if j:
                        flush()
                        tags.append(Tag((Piece(BREAK),)))
                    current.append(Piece(word_run))
            else:
                current.append(Piece(part, piece.weight))
    flush()
    return tags


def _whole_words(text: str) -> re.Pattern:
    """``text`` not glued to a longer word: ``cute`` matches in ``so cute.``, not in ``cuteness``."""
    head = r"(?<!\w)" if re.match(r"\w", text) else ""
    tail = r"(?!\w)" if re.search(r"\w$", text) else ""
    return re.compile(head + re.escape(text) + tail)


def reweight_text(text: str, weighted: list[Piece], escape: bool = True) -> str:
    """Escape literal ``text`` (e.g. rewritten natural language) and put user weights back.

    Each weighted piece, in order, wraps the first occurrence of its text after the previous
    one; a piece whose words are gone from ``text`` loses its weight. Everything else is
    literal (escaped when ``escape``).
    """
    out: list[str] = []
    pos = 0
    for piece in weighted:
        if piece.weight is None or not piece.text.strip():
            continue
        match = _whole_words(piece.text).search(text, pos)
        if match is None:
            continue
        before = text[pos : match.start()]
        out.append(escape_literal(before) if escape else before)
        out.append(piece.render(escape))
        pos = match.end()
    rest = text[pos:]
    out.append(escape_literal(rest) if escape else rest)
    return "".join(out)
