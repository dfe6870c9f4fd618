"""The slice of ComfyUI's V3 node API the pack uses, the same on every supported host.

The nodes are written against ``comfy_api.latest`` (ComfyUI 0.3.64 and v0.33 both ship it,
and ``nodes.load_custom_node`` checks the extension against that module's ``ComfyExtension``).
Newer schema features are used only where the running ComfyUI has them, detected here once:
``search_aliases`` (a ``Schema`` field in v0.33, absent in 0.3.64), the ``advanced`` input flag
and ``DynamicCombo`` with ``accept_all_inputs`` (per-option inputs of HDM Train LyCORIS that still
take the flat inputs of older prompts; see the module docstring of ``train``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from comfy_api.latest import ComfyExtension, io

__all__ = ["ADVANCED", "ComfyExtension", "DYNAMIC_INPUTS", "HAS_DYNAMIC_COMBO", "HAS_SEARCH_ALIASES", "io", "schema"]

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}
HAS_SEARCH_ALIASES = "search_aliases" in _SCHEMA_FIELDS
HAS_DYNAMIC_COMBO = hasattr(io, "DynamicCombo")
#: DynamicCombo *and* ``accept_all_inputs`` (v0.33): only then can a node show per-option inputs
#: (API names ``algorithm.rank``) and still receive the flat inputs (``rank``) of prompts saved
#: before, which ComfyUI would otherwise drop because the schema no longer declares them.
DYNAMIC_INPUTS = HAS_DYNAMIC_COMBO and "accept_all_inputs" in _SCHEMA_FIELDS
#: Keyword arguments that mark a widget "advanced" (drawn only when the user expands the node's
#: advanced inputs) on hosts whose inputs have the flag (v0.33), nothing elsewhere. Hidden widgets
#: keep their place, so saved workflows' positional ``widgets_values`` still fit.
ADVANCED: dict[str, Any] = {"advanced": True} if "advanced" in inspect.signature(io.Int.Input.__init__).parameters else {}


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


def check_options(cls: type[io.ComfyNode], **values: Any) -> bool | str:
    """``True``, or a message naming the first combo value that is not one of the input's options.

    For ``validate_inputs``: ComfyUI v0.33 checks V3 combo values itself, but 0.3.64 checks only
    V1-style option lists, and either skips its own check for an input that ``validate_inputs``
    takes by name. A linked input arrives as ``None`` (known only at run time) and is skipped.
    """
    schema_ = cls.define_schema()  # (not GET_SCHEMA: it caches on the class, which ComfyUI locks while validating)
    by_id = {i.id: i for i in schema_.inputs}
    for name, value in values.items():
        options = getattr(by_id.get(name), "options", None)
        if options is not None and HAS_DYNAMIC_COMBO and isinstance(by_id.get(name), io.DynamicCombo.Input):
            options = [o.key for o in options]  # a DynamicCombo's options are its keys
            value = value.get(name) if isinstance(value, dict) else value  # arrives nested as {name: key, ...}
        if value is None or options is None or value in options:
            continue
        shown = ", ".join(map(str, options[:20])) + (f" … ({len(options)} in all)" if len(options) > 20 else "")
        return f"{schema_.display_name}: {name} '{value}' is not one of the options ({shown})"
    return True
