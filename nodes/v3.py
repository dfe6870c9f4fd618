"""The slice of ComfyUI's V3 node API the pack uses, the same on every supported host.

The nodes are written against ``comfy_api.latest`` (ComfyUI 0.3.64 and v0.33 both ship it,
and ``nodes.load_custom_node`` checks the extension against that module's ``ComfyExtension``).
Newer schema features are used only where the running ComfyUI has them, detected here once:
``search_aliases`` (a ``Schema`` field since v0.4-ish, absent in 0.3.64) and ``DynamicCombo``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from comfy_api.latest import ComfyExtension, io

__all__ = ["ComfyExtension", "HAS_DYNAMIC_COMBO", "HAS_SEARCH_ALIASES", "io", "schema"]

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}
HAS_SEARCH_ALIASES = "search_aliases" in _SCHEMA_FIELDS
HAS_DYNAMIC_COMBO = hasattr(io, "DynamicCombo")


def schema(**kwargs: Any) -> io.Schema:
    """``io.Schema`` in category "HDM", leaving out the fields this ComfyUI does not know.

    Only optional presentation fields are dropped (``search_aliases``); anything that changes
    what a node does must exist on every supported host.
    """
    kwargs.setdefault("category", "HDM")
    dropped = set(kwargs) - _SCHEMA_FIELDS
    if dropped - {"search_aliases"}:
        raise TypeError(f"io.Schema of this ComfyUI has no field(s) {sorted(dropped)}")
    return io.Schema(**{k: v for k, v in kwargs.items() if k in _SCHEMA_FIELDS})
