"""One file-format probe for every reader of weight files (checkpoints, VAE, text encoder,
adapters, training states, disk caches, TIPO, the ComfyUI loaders), and atomic writes.

Why a probe and not a magic-number sniff: a safetensors file starts with its 8-byte
little-endian header length, so its first byte is that length's low byte and can be any
value: ``0x80`` (a legacy pickle's magic), ``{``/``[`` (text) or ``P``/``G``/``v``/``<``. A
file is therefore first tried *as safetensors* — the header length is plausible, byte 8 is
``{`` and the header parses as a JSON object — and only when that fails are the magic
numbers of foreign kinds (zip/legacy pickle, HTML/text, Git LFS pointer, GGUF) consulted.

Writes go to a dot-prefixed ``*.tmp`` file next to the target (no loader lists it: HDM
reads exact names, ComfyUI's ``folder_paths`` lists known weight extensions only), are
fsynced and then ``os.replace``-d, so a kill at any moment leaves either the old file, the
new complete file, or a temporary file nobody reads.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

#: Largest header accepted (the safetensors library's own limit is 100 MB as well).
MAX_HEADER = 100 * 1024 * 1024
#: Smallest file worth probing: a safetensors file with no tensors is 10 bytes (``{}``).
_MIN_SIZE = 10

SAFETENSORS = "safetensors"
ZIP_PICKLE = "zip-pickle"
LEGACY_PICKLE = "legacy-pickle"
PICKLES = (ZIP_PICKLE, LEGACY_PICKLE)

_MESSAGES = {
    ZIP_PICKLE: (
        "this is a pickled PyTorch checkpoint (zip), not safetensors. Pickles can run code when loaded; "
        "convert it to .safetensors, or pass allow_pickle=True to load it with torch.load(weights_only=True)"
    ),
    LEGACY_PICKLE: (
        "this is a legacy pickled PyTorch checkpoint, not safetensors. Convert it to .safetensors, "
        "or pass allow_pickle=True to load it with torch.load(weights_only=True)"
    ),
    "gguf": "this is a GGUF file; HDM checkpoints are read from .safetensors only",
    "text": "this is a text/HTML file, not model weights (a failed download saves an error page like this)",
    "lfs": "this is a Git LFS pointer file, not the weights: fetch the real file (git lfs pull) or download it directly",
}


@dataclass(frozen=True)
class Probe:
    """What a file is. ``kind`` is ``"safetensors"`` (then ``header`` is the parsed header), a
    foreign kind (``zip-pickle``, ``legacy-pickle``, ``gguf``, ``text``, ``lfs``) or
    ``"damaged"`` (empty, truncated, unknown bytes); ``message`` says what is wrong and what
    to do ('' for a usable safetensors file)."""

    path: Path
    kind: str
    size: int
    message: str = ""
    header_len: int = 0
    header: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.kind == SAFETENSORS and not self.message

    @property
    def is_pickle(self) -> bool:
        return self.kind in PICKLES


def _foreign_kind(head: bytes) -> str | None:
    """The kind named by a foreign file's magic number, or ``None``."""
    if head[:4] == b"PK\x03\x04":
        return ZIP_PICKLE
    if head[:1] == b"\x80":
        return LEGACY_PICKLE
    if head[:4] == b"GGUF":
        return "gguf"
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"[") or stripped[:5] in (b"<?xml", b"<html", b"<HTML") or stripped[:5].lower() == b"<!doc":
        return "text"
    return None


def _data_end(header: dict[str, Any]) -> int | None:
    """The end of the tensor data the header describes, or ``None`` when entries are malformed."""
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
                return None
        except (TypeError, KeyError, ValueError):
            return None
        end = max(end, stop)
    return end


def probe_file(path: str | os.PathLike) -> Probe:
    """Describe a file by its content (never by its name). Raises only ``OSError`` (unreadable)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(32)
        if size < _MIN_SIZE or len(head) < _MIN_SIZE:  # no weight file of any kind is this small
            return Probe(path, "damaged", size, f"file is empty or truncated ({size} bytes); download it again")
        (n,) = struct.unpack("<Q", head[:8])
        plausible = 2 <= n <= min(size - 8, MAX_HEADER)
        header = None
        if plausible and head[8:9] == b"{":
            f.seek(8)
            raw = f.read(n)
            try:
                parsed = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                parsed = None
            if isinstance(parsed, dict):
                header = parsed
    if header is not None:
        end = _data_end(header)
        if end is None:
            return Probe(path, "damaged", size, "not a safetensors file (its header does not describe tensors)", n, header)
        if 8 + n + end > size:
            return Probe(
                path, SAFETENSORS, size,
                f"file is truncated: it should be {8 + n + end} bytes but is {size}; "
                "the download was probably interrupted (or a save was cut short), download it again",
                n, header,
            )  # fmt: skip
        return Probe(path, SAFETENSORS, size, "", n, header)
    if head[8:9] == b"{" and 2 <= n <= MAX_HEADER and 8 + n > size:
        # checked before the magic numbers: a cut-off safetensors file may start with 0x80, '{', ...
        return Probe(
            path, "damaged", size,
            f"file is truncated (its header alone needs {8 + n} bytes, the file has {size}); "
            "the download was probably interrupted, download it again",
            n,
        )  # fmt: skip
    kind = _foreign_kind(head)
    if kind is not None:
        return Probe(path, kind, size, _MESSAGES[kind], n)
    if n > MAX_HEADER or n > size - 8:
        return Probe(path, "damaged", size, f"not a safetensors file (implausible header length {n})", n)
    return Probe(path, "damaged", size, "not a safetensors file (its header is not valid JSON)", n)


# --------------------------------------------------------------------------- writing
#: Test hook (fault injection only): ``HDM_TEST_SAVE_PAUSE=<phase>:<n>:<marker file>:<glob>``
#: makes the ``n``-th save (1-based, counted in this process) whose target path matches
#: ``<glob>`` (``fnmatch`` on the whole path, ``/`` separators) write ``<marker file>`` and
#: block at ``<phase>`` — ``before_rename`` (the temporary file is complete and fsynced, the
#: target not yet replaced) or ``after_rename`` — so a test can SIGKILL the process exactly
#: there. Unset (always, outside tests) it costs one environment lookup per save.
PAUSE_ENV = "HDM_TEST_SAVE_PAUSE"
_pause_counts: dict[str, int] = {}


def _test_pause(phase: str, target: Path, tmp: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    want, nth, marker, pattern = spec.split(":", 3)
    if want != phase or not fnmatch.fnmatch(target.as_posix(), pattern):
        return
    _pause_counts[spec] = _pause_counts.get(spec, 0) + 1
    if _pause_counts[spec] != int(nth):
        return
    with open(marker + ".part", "w") as f:
        f.write(f"{os.getpid()}\n{target}\n{tmp}\n")
    os.replace(marker + ".part", marker)
    deadline = time.monotonic() + 120  # a forgotten test must not hang forever
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)




#: An :func:`atomic_write` temporary file this old was left by a killed process (a save takes seconds).
STALE_AFTER_SECONDS = 3600.0
#: ``.<name>.<8 random characters>.tmp``, as :func:`tempfile.mkstemp` names them for :func:`atomic_write`.
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as an unfinished :func:`atomic_write` file (a kill leaves these)."""
    return _TEMPORARY_NAME.match(Path(path).name) is not None


def sweep_stale_temporaries(folder: str | os.PathLike, *, older_than: float = STALE_AFTER_SECONDS, recursive: bool = False) -> list[Path]:
    """Delete the temporary files killed :func:`atomic_write` calls left in ``folder``; the paths removed.

    Only files named as :func:`atomic_write` names them and not modified for ``older_than``
    seconds go: a save in progress (in this process or another one writing to the same folder)
    keeps its file fresh. Anything that cannot be removed stays; the sweep is tidying, never
    a reason to fail a run.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    now = time.time()
    for path in root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"):
        try:
            if is_temporary(path) and path.is_file() and now - path.stat().st_mtime > older_than:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        _log.info("removed %d unfinished temporary file(s) left by an interrupted save in %s", len(removed), root)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on success it replaces ``path``.

    The temporary file is ``.<name>.<random>.tmp`` (no loader lists it); it is fsynced
    before the rename and the folder after it, so after a crash or power loss ``path`` is
    either the old file or the complete new one. An error leaves ``path`` untouched and no
    temporary file behind. The result gets the usual permissions (``0666`` minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _test_pause("before_rename", path, tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _test_pause("after_rename", path, tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class SaveError(OSError):
    """A file could not be written (disk full, permission denied, ...): names the path and cause."""


def describe_os_error(exc: BaseException) -> str:
    """``exc`` in words, with a hint for the common causes."""
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        return f"{text} (the disk is full: free some space)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission denied" in str(exc):
        return f"{text} (no permission to write there: choose another folder or fix its permissions)"
    return text
