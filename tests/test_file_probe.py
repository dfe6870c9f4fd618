"""The one safetensors format probe (hdm_core/fileformat.py) behind every reader.

A safetensors file's first byte is its header length's low byte, so it can equal any
foreign magic number (0x80 legacy pickle, '{' / '[' text, 'P' zip, 'G' GGUF, 'v' LFS,
'<' HTML). Every valid file must load, whatever its header length, through every public
reader; every foreign kind must still get its own message.
"""

from __future__ import annotations

import json
import re
import struct

import probe_files as P  # registered by tests/conftest.py
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdm_core import fileformat
from hdm_core.checkpoint import CheckpointError, check_safetensors_file, load_xut, read_state_dict, save_safetensors
from hdm_core.fileformat import probe_file
from hdm_core.testing import tiny_qwen3, tiny_vae, tiny_xut
from hdm_core.text import load_qwen3
from hdm_core.train import AdapterConfig, DiskCache, convert_hdm_adapter, create_adapter, load_adapter, read_adapter
from hdm_core.train.adapters import save_adapter
from hdm_core.train.optim import OptimizerConfig, build_optimizer
from hdm_core.train.state import read_training_state, save_training_state
from hdm_core.vae import load_vae

SMALL = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.tensor([1.5, -2.0]), "i": torch.arange(3)}
# first bytes that collide with a foreign kind's magic number (or are otherwise special)
COLLIDING = [0x80, ord("{"), ord("["), ord("P"), ord("G"), ord("v"), ord("<"), 0x00]


def _writers(low: int) -> list[bool]:
    """Which writers can produce first byte ``low``: aligned (library, multiple of 8) and unaligned."""
    return [True, False] if low % 8 == 0 else [False]


def _assert_same(got, want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


# ----------------------------------------------------------------------------- every header length
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_every_first_byte_is_read_as_safetensors(tmp_path, aligned):
    lows = range(0, 256, 8) if aligned else range(256)
    for low in lows:
        path = (P.write_aligned if aligned else P.write_unaligned)(SMALL, tmp_path / f"{low:02x}.safetensors", low)
        assert path.read_bytes()[0] == low
        probe = probe_file(path)
        assert probe.ok and probe.kind == "safetensors" and probe.header_len % 256 == low, (low, probe)
        assert probe.header_len % 8 == 0 or not aligned
        assert set(check_safetensors_file(path)) >= set(SMALL)
        _assert_same(read_state_dict(path), SMALL)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=0, max_size=4),
    meta=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=40), max_size=3),
    low=st.integers(0, 255),
    aligned=st.booleans(),
)
def test_any_valid_file_round_trips(tmp_path, shapes, meta, low, aligned):
    gen = torch.Generator().manual_seed(len(shapes) + low)
    tensors = {f"t{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    low = low - low % 8 if aligned else low
    path = (P.write_aligned if aligned else P.write_unaligned)(tensors, tmp_path / "any.safetensors", low, meta)
    assert probe_file(path).ok
    sd = read_state_dict(path)
    _assert_same(sd, tensors)
    assert {k: v for k, v in sd.metadata.items() if k != "pad"} == meta


def test_boundary_sizes(tmp_path):
    empty = tmp_path / "no-tensors.safetensors"
    empty.write_bytes(struct.pack("<Q", 2) + b"{}")  # the smallest valid file: 10 bytes, header = rest of file
    assert probe_file(empty).ok and len(read_state_dict(empty)) == 0
    meta_only = P.write_unaligned({}, tmp_path / "meta-only.safetensors", 0x80, {"note": "metadata only"})
    assert len(read_state_dict(meta_only)) == 0 and read_state_dict(meta_only).metadata["note"] == "metadata only"
    zero = P.write_unaligned({"z": torch.zeros(0, 3)}, tmp_path / "zero.safetensors", ord("{"))
    assert read_state_dict(zero)["z"].shape == (0, 3)

    full = P.write_unaligned(SMALL, tmp_path / "full.safetensors", 0x80).read_bytes()
    n = struct.unpack("<Q", full[:8])[0]
    cases = {
        "data-short-by-one": (full[:-1], "truncated: it should be"),
        "header-only": (full[: 8 + n], "truncated: it should be"),
        "header-cut": (full[: 8 + n - 1], "its header alone needs"),
        "seven-bytes": (full[:7], r"empty or truncated \(7 bytes\)"),
        "empty": (b"", r"empty or truncated \(0 bytes\)"),
        "length-only": (full[:8], r"empty or truncated \(8 bytes\)"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        assert not probe_file(path).ok, name
        with pytest.raises(CheckpointError, match=message):
            read_state_dict(path)
    huge = tmp_path / "huge-header.safetensors"  # sparse: the length is over the cap although the file is as big
    with open(huge, "wb") as f:
        f.write(struct.pack("<Q", fileformat.MAX_HEADER + 1) + b"{")
        f.truncate(fileformat.MAX_HEADER + 64)
    with pytest.raises(CheckpointError, match="implausible header length"):
        read_state_dict(huge)


# ----------------------------------------------------------------------------- foreign kinds
def _foreign_files(tmp_path) -> dict[str, tuple[object, str, str]]:
    """name → (path, probe kind, read_state_dict message)."""
    zip_pt, legacy = tmp_path / "zip.pt", tmp_path / "legacy.pt"
    torch.save(SMALL, zip_pt)
    torch.save(SMALL, legacy, _use_new_zipfile_serialization=False)
    texts = {
        "page.safetensors": b"<!DOCTYPE html><html><body>429 Too Many Requests</body></html>",
        "json.safetensors": json.dumps({"error": "Repository not found", "detail": "x" * 40}).encode(),
        "array.safetensors": b'["not", "weights", "at", "all", "padding......"]',
        "xml.safetensors": b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>',
    }
    out = {"zip.pt": (zip_pt, "zip-pickle", "refusing to load a pickled checkpoint"),
           "legacy.pt": (legacy, "legacy-pickle", "refusing to load a pickled checkpoint")}  # fmt: skip
    for name, data in texts.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, "text", "text/HTML file, not model weights")
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 1234567\n")
    out["lfs.safetensors"] = (lfs, "lfs", "Git LFS pointer file")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    out["m.gguf"] = (gguf, "gguf", "GGUF file")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    out["junk.safetensors"] = (junk, "damaged", "not a safetensors file")
    return out


def test_each_foreign_kind_keeps_its_own_message(tmp_path):
    for name, (path, kind, message) in _foreign_files(tmp_path).items():
        probe = probe_file(path)
        assert probe.kind == kind and not probe.ok, (name, probe)
        with pytest.raises(CheckpointError, match=message):
            read_state_dict(path)
        with pytest.raises(CheckpointError):
            check_safetensors_file(path)
    # the pickles still load on opt-in, with weights_only
    _assert_same(read_state_dict(tmp_path / "legacy.pt", allow_pickle=True), SMALL)
    _assert_same(read_state_dict(tmp_path / "zip.pt", allow_pickle=True), SMALL)
    with pytest.raises(CheckpointError, match="legacy pickled PyTorch checkpoint"):
        check_safetensors_file(tmp_path / "legacy.pt")


def test_a_safetensors_file_with_a_pickle_name_is_read_as_safetensors(tmp_path):
    path = P.write_unaligned(SMALL, tmp_path / "adapter.pt", 0x80)
    _assert_same(read_state_dict(path), SMALL)  # no allow_pickle needed: it is not a pickle


# ----------------------------------------------------------------------------- every public reader
@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One file per reader, saved normally: tiny XUT, VAE, Qwen3, adapter, training state, cache entry."""
    root = tmp_path_factory.mktemp("originals")
    xut = tiny_xut(0)
    files = {}
    save_safetensors({"unet.model." + k: v for k, v in xut.state_dict().items()}, root / "xut.safetensors")
    save_safetensors(tiny_vae(2).state_dict(), root / "vae.safetensors")
    save_safetensors(tiny_qwen3(1).state_dict(), root / "te.safetensors")
    config = AdapterConfig(algo="lokr", dim=4, factor=4, preset="attn")
    adapter = create_adapter(xut, config, seed=3)
    with torch.no_grad():
        for _, p in adapter.trainable_parameters():
            p.add_(0.01)
    save_adapter(adapter, root / "adapter.safetensors", metadata={"ss_steps": "5"})
    opt = build_optimizer(adapter.trainable_parameters(), OptimizerConfig(lr=1e-3))
    save_training_state(root / "state.safetensors", adapter, opt, step=5, micro_step=5, loss_history=[0.5] * 5, train_config={"steps": 9})
    lycoris = {k.replace("lora_unet_", "lycoris_model_", 1): v for k, v in adapter.export_tensors().items()}
    save_safetensors(lycoris, root / "hdm-trainer.safetensors")
    cache = DiskCache(root / "cache")
    cache.put("latents", "ab" * 32, torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(4)))
    files.update(
        xut=root / "xut.safetensors", vae=root / "vae.safetensors", te=root / "te.safetensors",
        adapter=root / "adapter.safetensors", state=root / "state.safetensors", lycoris=root / "hdm-trainer.safetensors",
        cache=cache._path("latents", "ab" * 32), model=xut, config=config,
    )  # fmt: skip
    return files


@pytest.mark.parametrize("low", COLLIDING, ids=[f"{b:#04x}" for b in COLLIDING])
def test_every_reader_loads_files_whatever_their_first_byte(tmp_path, originals, low):
    o = originals
    for aligned in _writers(low):
        tag = "a" if aligned else "u"
        xut = P.resave(o["xut"], tmp_path / f"xut-{tag}.safetensors", low, aligned)
        _assert_same(load_xut(xut).state_dict(), o["model"].state_dict())
        vae = P.resave(o["vae"], tmp_path / f"vae-{tag}.safetensors", low, aligned)
        _assert_same(load_vae(vae).state_dict(), P.read_all(o["vae"])[0])
        te = P.resave(o["te"], tmp_path / f"te-{tag}.safetensors", low, aligned)
        got = load_qwen3(te).state_dict()
        assert all(torch.equal(got[k], v) for k, v in P.read_all(o["te"])[0].items() if k in got)

        adapter = P.resave(o["adapter"], tmp_path / f"adapter-{tag}.safetensors", low, aligned)
        file = read_adapter(adapter)
        assert file.config == o["config"] and file.metadata["ss_steps"] == "5"
        loaded = load_adapter(o["model"], adapter)
        _assert_same(loaded.export_tensors(), P.read_all(o["adapter"])[0])

        state = P.resave(o["state"], tmp_path / f"state-{tag}.safetensors", low, aligned)
        assert read_training_state(state).step == 5  # the issue: a resumable state refused as a pickle

        conv = P.resave(o["lycoris"], tmp_path / f"lycoris-{tag}.pt", low, aligned)  # HDM-trainer name, safetensors content
        report = convert_hdm_adapter(conv, tmp_path / f"converted-{tag}.safetensors")
        assert report.converted == len(P.read_all(o["lycoris"])[0])

        cache = DiskCache(tmp_path / f"cache-{tag}")
        entry = cache._path("latents", "ab" * 32)
        entry.parent.mkdir(parents=True, exist_ok=True)
        P.resave(o["cache"], entry, low, aligned)
        assert torch.equal(cache.get("latents", "ab" * 32), P.read_all(o["cache"])[0]["value"]) and cache.discarded == 0


def test_tipo_folder_weights_go_through_the_probe(tmp_path):
    from hdm_core.tipo import loader
    from hdm_core.tipo.errors import TipoModelError

    folder = tmp_path / "tipo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    P.write_unaligned(SMALL, folder / "model.safetensors", 0x80)
    loader.check_transformers_folder(folder)  # a valid file that starts like a pickle passes
    (folder / "model.safetensors").write_bytes(b"<!DOCTYPE html><html>Rate limited</html>")
    with pytest.raises(TipoModelError, match="model.safetensors: this is a text/HTML file"):
        loader.check_transformers_folder(folder)


# ----------------------------------------------------------------------------- ComfyUI loaders
def test_comfyui_loaders_read_any_first_byte_and_name_foreign_files(cui, tmp_path):
    import hdm_comfy_harness as H

    base = cui.run(H.txt2img_prompt(steps=1), capture={"image": ("8", 0)})
    assert base.ok, base.error
    ckpt = P.resave(cui.model_path("checkpoints", H.CKPT_NAME), cui.models / "checkpoints" / "hdm-0x80.safetensors", 0x80, True)
    te = P.resave(cui.model_path("text_encoders", H.TE_NAME), cui.models / "text_encoders" / "qwen3-0x7b.safetensors", ord("{"), False)
    assert ckpt.read_bytes()[:1] == b"\x80" and te.read_bytes()[:1] == b"{"
    out = cui.run(H.txt2img_prompt(ckpt=ckpt.name, text_encoder=te.name, steps=1), capture={"image": ("8", 0)})
    assert out.ok, out.error
    # the same weights, the same image (ComfyUI 0.3.64 on the CPU is not bit-deterministic between runs)
    diff = float((out.outputs["image"] - base.outputs["image"]).abs().max())
    assert diff <= 2e-3, diff

    read_file = sys_modules_loaders(cui).read_file
    for name, (path, kind, message) in _foreign_files(tmp_path).items():
        if kind in ("zip-pickle", "legacy-pickle"):
            continue  # ComfyUI's own loader reads .pt pickles with weights_only
        with pytest.raises(Exception, match=re.escape(message.split(",")[0])):
            read_file(path)


def sys_modules_loaders(cui):
    import sys

    return sys.modules[cui.hdm.__name__ + ".loaders"]
