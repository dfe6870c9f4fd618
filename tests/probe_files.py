"""Safetensors files with a chosen header length, for the format-probe tests.

A safetensors file starts with its header length (8 bytes, little-endian), so its first
byte is that length's low byte. The safetensors library pads headers to a multiple of 8
(32 possible first bytes); other writers do not (256). These helpers write the same
tensors with the header length's low byte set to any value, both ways, by padding the
metadata.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64"}


def read_all(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _unaligned_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str], pad: int) -> tuple[bytes, bytes]:
    header: dict = {"__metadata__": {**metadata, "pad": "x" * pad}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    return json.dumps(header, separators=(",", ":")).encode(), b"".join(blobs)


def write_unaligned(tensors: dict[str, torch.Tensor], path: Path, low_byte: int, metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file (no header padding) whose first byte is ``low_byte``."""
    base, _ = _unaligned_header(tensors, metadata or {}, 0)
    pad = (low_byte - len(base)) % 256
    raw, data = _unaligned_header(tensors, metadata or {}, pad)
    assert len(raw) % 256 == low_byte
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def write_aligned(tensors: dict[str, torch.Tensor], path: Path, low_byte: int, metadata: dict[str, str] | None = None) -> Path:
    """The safetensors library's own file (header padded to 8) whose first byte is ``low_byte`` (a multiple of 8)."""
    from safetensors.torch import save_file

    assert low_byte % 8 == 0
    save_file(tensors, str(path), metadata={**(metadata or {}), "pad": ""})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    unpadded = len(raw[8 : 8 + n].rstrip(b" "))  # the library pads the JSON with spaces
    pad = (low_byte - unpadded) % 256
    save_file(tensors, str(path), metadata={**(metadata or {}), "pad": "x" * pad})
    assert path.read_bytes()[0] == low_byte and struct.unpack("<Q", path.read_bytes()[:8])[0] % 8 == 0
    return path


def resave(path: Path, dest: Path, low_byte: int, aligned: bool) -> Path:
    """``path``'s tensors and metadata re-saved at ``dest`` with first byte ``low_byte``."""
    tensors, meta = read_all(path)
    writer = write_aligned if aligned else write_unaligned
    return writer(tensors, dest, low_byte, meta)
