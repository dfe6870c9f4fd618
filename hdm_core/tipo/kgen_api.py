"""The parts of tipo-kgen the expander uses: imported late and safely, with its known bugs fixed.

tipo-kgen (``kgen``) holds TIPO's prompt format, output parser, post-processing and the
danbooru tag lists. It is imported only when a TIPO node or command actually runs (it costs
~0.7 s and ~120 MB for the tag lists, plus torch/transformers), never downloads or installs
anything, and is pinned because a few of its internals are worked around here:

* ``parse_tipo_result`` strips ``"<s>"``/``"</s>"`` as *character sets*, eating trailing
  ``s``/``<``/``>``/``/`` of the last tag or sentence (``glasses`` → ``glasse``):
  :func:`parse_result` removes the markers itself and guards the ends with newlines.
* ``post_generate_process`` caps new tags with the *sentence* limit when the model overshoots
  the tag limit (2/4/8 tags left): :func:`post_process` caps tags itself first.
* its ban list is a module global applied with substring/regex matching to every tag,
  including the user's own: :func:`post_process` bans only model-added tags, by whole tag
  or ``*`` wildcard, and keeps kgen's global empty while it runs.
* ``generate`` (not used here) forces fp16 on CPU, runs without a KV cache for TIPO's
  shipped configs and reseeds the global RNGs; the expander has its own generation code.
* a llama-cpp-python that is installed but fails to load (missing DLL/GLIBC) raises
  ``RuntimeError``/``OSError`` from inside ``import kgen.executor.tipo``:
  :func:`llama_cpp` imports it first, and marks a broken one as absent.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import logging
import sys
import threading
from types import ModuleType, SimpleNamespace
from typing import Any

from .errors import TipoDependencyError

KGEN_PACKAGE = "tipo-kgen"
KGEN_VERSION = "0.3.1"  # the version the workarounds below were checked against (requirements.txt pins it)
INSTALL_HINT = f"pip install {KGEN_PACKAGE}=={KGEN_VERSION} sentencepiece protobuf (into the Python that runs ComfyUI)"

log = logging.getLogger(__name__)
_lock = threading.RLock()
_kgen: SimpleNamespace | None = None
_llama: tuple[ModuleType | None, str] | None = None


def llama_cpp() -> tuple[ModuleType | None, str]:
    """``(llama_cpp module or None, why not)``; imports it once, and a broken install cannot crash anything.

    A module that raises anything but ImportError on import is replaced by ``None`` in
    ``sys.modules`` so that kgen's own ``from llama_cpp import Llama`` sees an ImportError.
    """
    global _llama
    with _lock:
        if _llama is None:
            try:
                module = importlib.import_module("llama_cpp")
                _llama = (module, "") if hasattr(module, "Llama") else (None, "llama_cpp has no Llama class")
            except ImportError as exc:
                _llama = (None, f"it is not installed ({exc})")
            except Exception as exc:  # a broken native library: RuntimeError, OSError, ...
                sys.modules["llama_cpp"] = None  # type: ignore[assignment]
                _llama = (None, f"it is installed but failed to load: {type(exc).__name__}: {exc}")
        return _llama


def _check_installed() -> str:
    try:
        version = importlib.metadata.version(KGEN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise TipoDependencyError(f"TIPO needs the {KGEN_PACKAGE} package, which is not installed: {INSTALL_HINT}") from None
    if version != KGEN_VERSION and not getattr(_check_installed, "warned", False):
        _check_installed.warned = True  # type: ignore[attr-defined]
        log.warning("%s %s is installed; HDM's TIPO support was tested with %s", KGEN_PACKAGE, version, KGEN_VERSION)
    return version


def _formatter() -> ModuleType:
    """``kgen.formatter`` alone (tag lists, no torch/transformers): all that formatting without a model needs."""
    with _lock:
        if "kgen.formatter" not in sys.modules:
            _check_installed()
        try:
            return importlib.import_module("kgen.formatter")
        except ImportError as exc:
            raise TipoDependencyError(f"{KGEN_PACKAGE} failed to import ({exc}): {INSTALL_HINT}") from exc


def load_kgen() -> SimpleNamespace:
    """``kgen`` modules as ``.tipo`` (executor), ``.formatter``, ``.metainfo``; imported once."""
    global _kgen
    with _lock:
        if _kgen is not None:
            return _kgen
        version = _check_installed()
        llama_cpp()  # before kgen, which imports llama_cpp and crashes on a broken one
        try:
            try:
                kgen_logger = importlib.import_module("kgen.logging").logger
            except (ImportError, AttributeError):
                kgen_logger = None
            level = kgen_logger.level if kgen_logger else None
            if kgen_logger:  # kgen logs "Llama-cpp-python cannot be imported" at import, GGUF wanted or not
                kgen_logger.setLevel(logging.ERROR)
            try:
                tipo = importlib.import_module("kgen.executor.tipo")
            finally:
                if kgen_logger:
                    kgen_logger.setLevel(level)
            metainfo = importlib.import_module("kgen.metainfo")
        except OSError as exc:
            raise TipoDependencyError(
                f"{KGEN_PACKAGE} failed to import ({exc}). It creates a 'models' folder inside its own "
                "install directory on import: make that folder writable, or reinstall it with "
                f"{INSTALL_HINT}"
            ) from exc
        except ImportError as exc:
            raise TipoDependencyError(f"{KGEN_PACKAGE} failed to import ({exc}): {INSTALL_HINT}") from exc
        _kgen = SimpleNamespace(tipo=tipo, formatter=_formatter(), metainfo=metainfo, version=version)
        return _kgen


# --------------------------------------------------------------------------- tags


def classify_tag(tag: str) -> tuple[str, str]:
    """``(category, spelling)`` of one tag by kgen's danbooru lists, e.g. ``("characters", "izuna (blue archive)")``.

    kgen normalises ``_`` to spaces for known tags and for unknown tags of 4+ characters
    (so ``^_^`` stays). Categories: special, characters, copyrights, artist, meta, quality,
    rating, general.
    """
    tag_map = _formatter().seperate_tags([tag])
    for category, tags in tag_map.items():
        if tags:
            return category, tags[0]
    return "general", tag.strip()


def ban_matcher(ban_tags: str):
    """Predicate for comma-separated ban entries: a whole tag (case, ``_``/space ignored) or a ``*`` wildcard."""
    entries = [_norm(e) for e in ban_tags.replace("\n", ",").split(",") if e.strip()]

    def banned(tag: str) -> bool:
        t = _norm(tag)
        return any(fnmatch.fnmatchcase(t, e) if "*" in e or "?" in e else t == e for e in entries)

    return banned


def _norm(tag: str) -> str:
    return " ".join(tag.replace("_", " ").lower().split())


# --------------------------------------------------------------------------- TIPO output


def parse_result(text: str) -> dict[str, Any]:
    """kgen's ``parse_tipo_result`` without its trailing-"s" bug (see the module docstring)."""
    cleaned = text.replace("<s>", "").replace("</s>", "")
    return load_kgen().tipo.parse_tipo_result("\n" + cleaned + "\n")


def post_process(parsed: dict[str, Any], general: str, nl_prompt: str, mode: str | None, length: str, banned=None) -> dict[str, Any]:
    """kgen's ``post_generate_process`` with the tag cap fixed and bans applied to new tags only.

    ``general`` is the comma-separated tag input of this pass: those tags are never banned
    or capped. New tags beyond ``TARGET_TIPO_MAX[length]`` are dropped in the order the
    model wrote them (kgen then shuffles the new tags with Python's ``random``, which the
    caller seeds).
    """
    kgen = load_kgen()
    inputs = {t.strip() for t in general.split(",") if t.strip()}
    if banned is not None:
        for key, value in list(parsed.items()):
            if isinstance(value, list) and key != "tag":
                parsed[key] = [t for t in value if t in inputs or not banned(t)]
    new_budget = max(kgen.metainfo.TARGET_TIPO_MAX[length] - sum(t in inputs for t in parsed.get("general", [])), 0)
    kept = []
    for tag in parsed.get("general", []):
        if tag in inputs:
            kept.append(tag)
        elif new_budget > 0 and tag not in kept:
            kept.append(tag)
            new_budget -= 1
    if "general" in parsed:
        parsed["general"] = kept
    with _lock:
        saved = kgen.tipo.BAN_TAGS
        kgen.tipo.BAN_TAGS = []
        try:
            return kgen.tipo.post_generate_process(parsed, general, nl_prompt, mode, length)
        finally:
            kgen.tipo.BAN_TAGS = saved
