"""HDM Train LyCORIS's adapter inputs: ``algorithm`` and the options that belong to it.

Two layouts of the same inputs, chosen by the host (``v3.DYNAMIC_INPUTS``):

* **flat** (ComfyUI without DynamicCombo, e.g. 0.3.64): ``algorithm``, ``rank``, ``alpha``,
  ``lokr_factor`` as separate widgets, exactly as every release so far saved them.
* **dynamic** (v0.33): ``algorithm`` is a DynamicCombo whose options carry only their own
  inputs (``rank``/``alpha`` for the LoRA family, + ``lokr_factor`` for lokr, a block size for
  diag-oft/boft, nothing for full). ComfyUI names them ``algorithm.rank`` … in API prompts and
  passes them nested (``algorithm={"algorithm": "lokr", "rank": 8, …}``). They are optional with
  the flat defaults, and the node accepts all inputs, so a prompt saved with the flat names
  (``"rank": 8``, a literal or a link) still validates and trains with *its* values.

The frontend restores saved ``widgets_values`` by position and inserts a DynamicCombo's option
widgets right after it, so web/hdm_dynamic_combo.js (with web/hdm_saved_layouts.js, which holds
the flat layout's widget order) rewrites values saved in the flat layout into the dynamic one
before the frontend restores them.
"""

from __future__ import annotations

from typing import Any

from ..hdm_core.train import ALGORITHMS
from .v3 import ADVANCED, DYNAMIC_INPUTS, dynamic_choice, io

__all__ = ["ALGORITHM_INPUTS", "DEFAULTS", "algorithm_input", "algorithm_settings"]

#: The inputs each algorithm uses (flat names); the dynamic layout shows only these.
ALGORITHM_INPUTS: dict[str, tuple[str, ...]] = {
    "lora": ("rank", "alpha"),
    "locon": ("rank", "alpha"),
    "loha": ("rank", "alpha"),
    "lokr": ("rank", "alpha", "lokr_factor"),
    "dora": ("rank", "alpha"),
    "glora": ("rank", "alpha"),
    "diag-oft": ("rank",),
    "boft": ("rank",),
    "full": (),
}
assert set(ALGORITHM_INPUTS) == set(ALGORITHMS), "every algorithm needs its list of inputs"

#: The widgets' defaults, also what a prompt without the input gets.
DEFAULTS: dict[str, Any] = {"rank": 16, "alpha": 8.0, "lokr_factor": -1}
#: What ``rank`` means per algorithm (its label in the dynamic layout, and its tooltip).
_RANK_MEANING = {
    "lokr": ("rank", "Rank of the decomposed Kronecker factor (ignored when both factors are full)."),
    "diag-oft": ("block_size", "Block size of the orthogonal blocks (stored as the adapter's rank)."),
    "boft": ("block_factor", "Butterfly block factor (stored as the adapter's rank; the attention qkv layer needs >= 6)."),
}
_RANK_TOOLTIP = ("lora/locon/loha/dora/glora: the rank. lokr: rank of the decomposed factor (ignored when both factors are "
                 "full). diag-oft: block size. boft: butterfly block factor (the attention qkv layer needs >= 6). full: ignored.")  # fmt: skip
_ALGORITHM_TOOLTIP = ("The LyCORIS adapter: lora, locon (lora + the patch conv with target 'full'), loha, lokr (HDM's own "
                      "fine-tune), dora (weight-decomposed lora), glora, diag-oft, boft, or full (a full weight difference). "
                      "Every one loads exactly in stock Load LoRA.")  # fmt: skip


def _input(name: str, algorithm: str | None, nested: bool) -> io.Input:
    """One of the algorithm's inputs; nested ones are optional so flat prompts still validate."""
    extra: dict[str, Any] = {"optional": True} if nested else {}
    if name == "rank":
        label, tip = _RANK_MEANING.get(algorithm or "", ("rank", "The rank of the low-rank update."))
        if nested and label != "rank":
            extra["display_name"] = label
        return io.Int.Input("rank", default=DEFAULTS["rank"], min=1, max=1024, tooltip=tip if nested else _RANK_TOOLTIP, **extra)
    if name == "alpha":
        return io.Float.Input("alpha", default=DEFAULTS["alpha"], min=0.0, max=4096.0, step=0.5, tooltip="Scale of the LoRA family: the update is multiplied by alpha / rank (alpha = rank: scale 1). Ignored by diag-oft, boft and full.", **extra)  # fmt: skip
    if name == "lokr_factor":
        return io.Int.Input("lokr_factor", **({} if nested else ADVANCED), default=DEFAULTS["lokr_factor"], min=-1, max=1024, tooltip="lokr only: the Kronecker factor (-1 = as balanced as possible; HDM's fine-tune used 4). Smaller factors give larger adapters.", **extra)  # fmt: skip
    raise KeyError(name)


def algorithm_input() -> list[io.Input]:
    """The ``algorithm`` input(s) in this host's layout, in the flat widget order."""
    if not DYNAMIC_INPUTS:
        return [io.Combo.Input("algorithm", options=list(ALGORITHMS), default="lora", tooltip=_ALGORITHM_TOOLTIP)] + [
            _input(name, None, nested=False) for name in ("rank", "alpha", "lokr_factor")
        ]
    options = [io.DynamicCombo.Option(key, [_input(n, key, nested=True) for n in ALGORITHM_INPUTS[key]]) for key in ALGORITHMS]
    return [io.DynamicCombo.Input("algorithm", options=options, tooltip=_ALGORITHM_TOOLTIP + " Shows only the chosen one's options.")]


def algorithm_settings(algorithm: Any, **flat: Any) -> tuple[str, int, float, int]:
    """``(algorithm, rank, alpha, lokr_factor)`` from either layout (``v3.dynamic_choice``).

    ``algorithm`` is a name (flat layout) or the DynamicCombo's nested dict; ``flat`` holds the
    flat-named values a prompt gave (older prompts). Names and ranges are checked by
    ``validate_inputs`` when queued and by ``AdapterConfig`` when run.
    """
    algorithm, values = dynamic_choice("algorithm", algorithm, flat, DEFAULTS)
    return str(algorithm), int(values["rank"]), float(values["alpha"]), int(values["lokr_factor"])
