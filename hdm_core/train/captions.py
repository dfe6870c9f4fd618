"""Caption augmentation in HDM's (kohya-style) dataset format.

A caption ``"1girl, solo ||| smile, red eyes %% outdoors, sky"`` reads: tags before the
keep separator ``|||`` are always kept, in order, first; the rest is split into groups by
``%%``, each group into tags by the tag separator. Per call, groups may be shuffled, tags
are dropped with ``tag_dropout`` and shuffled inside their group, whole groups are dropped
with ``group_dropout``, and the whole caption is replaced by ``""`` with
``caption_dropout`` (for classifier-free guidance). Without a ``|||`` the first
``keep_tokens`` tags are kept instead (sd-scripts' rule). Output tags are joined with
``", "``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CaptionConfig:
    shuffle_tags: bool = True
    shuffle_groups: bool = False
    keep_separator: str = "|||"
    keep_tokens: int = 0
    group_separator: str = "%%"
    tag_separator: str = ","
    tag_dropout: float = 0.0
    group_dropout: float = 0.0
    caption_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("tag_dropout", "group_dropout", "caption_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.keep_tokens < 0:
            raise ValueError(f"keep_tokens must be >= 0, got {self.keep_tokens}")
        if not self.tag_separator:
            raise ValueError("tag_separator must not be empty")

    @property
    def is_random(self) -> bool:
        """Whether the same caption can come out differently on two calls."""
        return bool(
            self.shuffle_tags or self.shuffle_groups or self.tag_dropout or self.group_dropout or self.caption_dropout
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def process_caption(text: str, cfg: CaptionConfig, rng: random.Random) -> str:
    """One augmented version of ``text`` (deterministic for a given ``rng`` state)."""
    text = " ".join(text.split())  # newlines and runs of spaces → one space
    if cfg.caption_dropout and rng.random() < cfg.caption_dropout:
        return ""
    if cfg.keep_separator and cfg.keep_separator in text:
        keep_part, rest = text.split(cfg.keep_separator, 1)
        keep = _split(keep_part.replace(cfg.group_separator, cfg.tag_separator), cfg.tag_separator)
    else:
        keep, rest = [], text
    groups = [_split(g, cfg.tag_separator) for g in rest.split(cfg.group_separator)] if cfg.group_separator else [_split(rest, cfg.tag_separator)]
    groups = [g for g in groups if g]
    if not keep and cfg.keep_tokens and groups:
        flat = [t for g in groups for t in g]
        keep = flat[: cfg.keep_tokens]
        remaining = flat[cfg.keep_tokens :]
        groups = [remaining] if remaining else []
    if cfg.shuffle_groups:
        rng.shuffle(groups)
    out = list(keep)
    for group in groups:
        if cfg.tag_dropout:
            group = [t for t in group if rng.random() >= cfg.tag_dropout]
        else:
            group = list(group)
        if cfg.shuffle_tags:
            rng.shuffle(group)
        if cfg.group_dropout and rng.random() < cfg.group_dropout:
            continue
        out.extend(group)
    return ", ".join(out)


def clean_caption(text: str, cfg: CaptionConfig) -> str:
    """The caption with separators resolved and no augmentation (for sample prompts and logs)."""
    return process_caption(text, CaptionConfig(**{**cfg.to_dict(), "shuffle_tags": False, "shuffle_groups": False,
                                                   "tag_dropout": 0.0, "group_dropout": 0.0, "caption_dropout": 0.0}),
                           random.Random(0))
