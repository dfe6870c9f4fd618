"""Bracket escaping between danbooru tags and ComfyUI's prompt-weight syntax.

ComfyUI reads ``(text)`` as emphasis (×1.1) and ``(text:1.2)`` as an explicit weight; only
``\\(`` and ``\\)`` are literal brackets. Danbooru tags carry brackets of their own
(``izuna (blue archive)``), so an HDM prompt pasted into a stock text node silently turns
series names into weights. This module is the one place that converts between the two:

* :func:`escape_brackets` — every unescaped bracket becomes literal (never double-escaped).
* :func:`unescape_brackets` — ``\\(`` / ``\\)`` back to plain brackets; nothing else changes.
* :func:`escape_danbooru` — bare brackets become literal, while explicit weight groups
  ``(tag:1.2)`` stay weights (with any brackets inside them made literal).

A bracket counts as escaped when a backslash stands right before it, which is how ComfyUI's
parser (``escape_important``) sees it; every other backslash passes through untouched.
"""

from __future__ import annotations

import re

_UNESCAPED = re.compile(r"(?<!\\)([()])")


def escape_brackets(text: str) -> str:
    """Make every bracket literal for ComfyUI: ``(`` → ``\\(``, ``)`` → ``\\)``, idempotent."""
    return _UNESCAPED.sub(r"\\\1", text)


def unescape_brackets(text: str) -> str:
    """Turn ``\\(`` and ``\\)`` back into plain brackets; other backslashes are kept."""
    return text.replace("\\(", "(").replace("\\)", ")")


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


def escape_danbooru(text: str) -> str:
    """Escape bare brackets but keep explicit weights: ``(a (b):1.2) c (d)`` → ``(a \\(b\\):1.2) c \\(d\\)``."""
    # Positions of unescaped brackets, matched with a stack; unmatched ones are literal.
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _UNESCAPED.finditer(text):
        i = m.start()
        if text[i] == "(":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    keep: set[int] = set()
    for open_i, close_i in pairs.items():
        if is_weight_group(text[open_i + 1 : close_i]):
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
