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

__all__ = [
    "ADVANCED", "ComfyExtension", "DYNAMIC_INPUTS", "HAS_DYNAMIC_COMBO", "check_inputs", "check_options",
    "dynamic_choice", "io", "schema",
]  # fmt: skip

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}
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


def _inputs_by_id(schema_: io.Schema) -> dict[str, io.Input]:
    """The schema's inputs by id, a DynamicCombo's per-option inputs included (the first of a name wins).

    Older prompts give those under their flat names (``crop`` rather than ``data_source.crop``),
    and the node must check them itself: ComfyUI checks only the inputs the schema declares.
    """
    found: dict[str, io.Input] = {}
    for input_ in schema_.inputs:
        found.setdefault(input_.id, input_)
        for option in getattr(input_, "options", None) or []:
            for nested in getattr(option, "inputs", ()):
                found.setdefault(nested.id, nested)
    return found


def _option_problem(node: str, by_id: dict[str, io.Input], values: dict[str, Any]) -> str | None:
    for name, value in values.items():
        input_ = by_id.get(name)
        options = getattr(input_, "options", None)
        if options is not None and HAS_DYNAMIC_COMBO and isinstance(input_, io.DynamicCombo.Input):
            options = [o.key for o in options]  # a DynamicCombo's options are its keys
            value = value.get(name) if isinstance(value, dict) else value  # arrives nested as {name: key, ...}
        if value is None or isinstance(value, list) or options is None or value in options:
            continue
        shown = ", ".join(map(str, options[:20])) + (f" … ({len(options)} in all)" if len(options) > 20 else "")
        return f"{node}: {name} '{value}' is not one of the options ({shown})"
    return None


def _range_problem(node: str, by_id: dict[str, io.Input], values: dict[str, Any]) -> str | None:
    for name, value in values.items():
        input_ = by_id.get(name)
        whole = isinstance(input_, io.Int.Input)
        if value is None or isinstance(value, (dict, list)) or not (whole or isinstance(input_, io.Float.Input)):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{node}: {name} {value!r} is not a number"
        low, high = input_.min, input_.max
        if (low is not None and number < low) or (high is not None and number > high) or (whole and number != int(number)):
            kind = "a whole number" if whole else "a number"
            return f"{node}: {name} {value!r} must be {kind} from {_number(low)} to {_number(high)}"
    return None


def check_options(cls: type[io.ComfyNode], **values: Any) -> bool | str:
    """``True``, or a message naming the first combo value that is not one of the input's options.

    For ``validate_inputs``: ComfyUI v0.33 checks V3 combo values itself, but 0.3.64 checks only
    V1-style option lists, and either skips its own check for an input that ``validate_inputs``
    takes by name. A linked input arrives as ``None`` (known only at run time) and is skipped.
    Names are looked up among the DynamicCombos' option inputs too (flat values of older prompts).
    """
    schema_ = cls.define_schema()  # (not GET_SCHEMA: it caches on the class, which ComfyUI locks while validating)
    return _option_problem(schema_.display_name, _inputs_by_id(schema_), values) or True


def check_inputs(cls: type[io.ComfyNode], **values: Any) -> bool | str:
    """``True``, or a message naming the first value outside its input's options or range, nested included.

    For a ``validate_inputs`` that takes ``**kwargs``: only then does ComfyUI hand it the values
    of a DynamicCombo's options (nested, ``data_source={"data_source": "folder", "crop": …}``),
    and it then skips its own option and range checks for every input. Top-level values (flat
    names of older prompts included) are checked first, then each DynamicCombo's chosen option
    against that option's own inputs (two options may have inputs of one name, e.g. TIPO's
    ``backend.model``).
    """
    schema_ = cls.define_schema()
    node, by_id = schema_.display_name, _inputs_by_id(schema_)
    combos = {i.id: i for i in schema_.inputs if HAS_DYNAMIC_COMBO and isinstance(i, io.DynamicCombo.Input)}
    problem = _option_problem(node, by_id, values) or _range_problem(node, by_id, values)  # (a combo dict: its key)
    for combo, input_ in combos.items():
        nested = values.get(combo)
        option = next((o for o in input_.options if isinstance(nested, dict) and o.key == nested.get(combo)), None)
        if problem or option is None:
            continue
        own = {i.id: i for i in option.inputs}
        chosen = {k: v for k, v in nested.items() if k != combo}
        problem = _option_problem(node, own, chosen) or _range_problem(node, own, chosen)
    return problem or True


def _number(x: float | None) -> str:
    """A bound as people write it: 1000000, not 1e+06; 0.95, not 0.9500000001."""
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else f"{x:.10g}"


def dynamic_choice(name: str, value: Any, flat: dict[str, Any], defaults: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(chosen option, {input: value})`` of the DynamicCombo input ``name``, from either layout of a prompt.

    ``value`` is what the node received for the combo: its nested dict (``{"algorithm": "lokr",
    "rank": 8}`` on a DynamicCombo host), a plain option name (the flat layout), or ``None`` (an
    optional combo the prompt does not have: one saved before the combo existed). ``flat`` holds
    the flat-named values the prompt gave (older prompts reach the node through
    ``accept_all_inputs``). Per input, a flat value wins over a nested one (a prompt has one or
    the other), and an input neither gives takes ``defaults``.
    """
    nested: dict[str, Any] = {}
    if isinstance(value, dict):
        nested, value = {k: v for k, v in value.items() if v is not None}, value.get(name)
    values = {k: flat[k] if flat.get(k) is not None else nested.get(k, default) for k, default in defaults.items()}
    return value, values
