"""Reliability under faults: kills (SIGKILL), failed writes and corrupt caches.

The kill tests run ``python -m trainer fit`` on tiny models in a subprocess and stop it at
exact points with the atomic-save pause hook (``HDM_TEST_SAVE_PAUSE``, see
``hdm_core/fileformat.py``): the process writes a marker file and blocks, the test kills it.
Then every file left must be complete and loadable, or a ``.*.tmp`` file no loader lists,
and ``--resume`` from the newest state must reproduce the uninterrupted run exactly.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from hdm_core import fileformat
from hdm_core.checkpoint import SaveError, read_state_dict, save_safetensors
from hdm_core.fileformat import probe_file
from hdm_core.train import DiskCache, read_adapter
from hdm_core.train.state import read_training_state

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STEPS = 6


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), OMP_NUM_THREADS="1")
    env.pop(fileformat.PAUSE_ENV, None)
    env.update(extra)
    return env


def _setup(root: Path, si) -> Path:
    """A tiny model, five images, latent + text caches, a save (and resume state) every 2 steps."""
    root.mkdir(parents=True, exist_ok=True)
    model = si.tiny_xut(0)
    save_safetensors({f"unet.model.{k}": v for k, v in model.state_dict().items()}, root / "tiny_hdm.safetensors")
    si.write_image_folder(root / "data" / "2_chara", [(64, 64), (72, 64)])
    si.write_image_folder(root / "data", [(64, 80), (64, 64)], seed=3)
    (root / "config.toml").write_text(
        '[model]\ncheckpoint = "tiny_hdm.safetensors"\ndevice = "cpu"\n'
        '[encoders]\nimage = "standins:load_tiny_vae"\ntext = "standins:load_tiny_te"\n'
        '[dataset]\npath = "data"\ncache_latents = true\ncache_text = true\n[dataset.buckets]\nresolution = 64\n'
        '[adapter]\nalgo = "lokr"\ndim = 4\nfactor = 4\npreset = "attn"\n'
        f"[training]\nsteps = {STEPS}\nbatch_size = 2\nseed = 1\n[training.optimizer]\nlr = 1e-2\nwarmup_steps = 1\n"
        '[output]\ndir = "out"\nname = "chara"\nsave_every = 2\nsave_dtype = "fp32"\n'
        "[sample]\nevery = 0\n"
    )
    return root / "config.toml"


def _fit(root: Path, *args: str) -> int:
    """``python -m trainer fit`` in this process (a subprocess costs seconds of imports)."""
    from trainer.cli import main

    sys.path.insert(0, str(HERE))  # the config's encoder factories live in standins
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # a known Ctrl-C handler (see test_cli)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return main(["fit", str(root / "config.toml"), *args])
    finally:
        os.chdir(cwd)
        signal.signal(signal.SIGINT, outer)
        sys.path.remove(str(HERE))


def _fit_and_kill(root: Path, phase: str, pattern: str, nth: int = 1, *args: str) -> Path:
    """Run ``fit`` until the ``nth`` save matching ``pattern`` reaches ``phase``, then SIGKILL it."""
    marker = root / f"paused-{time.monotonic_ns()}"
    log = open(root / "killed-run.log", "w")
    spec = f"{phase}:{nth}:{marker}:{pattern}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "fit", "config.toml", *args], cwd=root,
        env=_env(**{fileformat.PAUSE_ENV: spec}), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _kill_when_paused(proc, marker, log, 300, f"fit, pausing at {spec}")
    return marker


def _kill_when_paused(proc: subprocess.Popen, marker: Path, log, timeout: float, what: str) -> None:
    """SIGKILL ``proc`` once the save-pause hook has written ``marker``; it never outlives the test."""
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(f"{what}: never paused (rc {proc.poll()}):\n{Path(log.name).read_text()[-4000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _check_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every file under ``folder``: complete and loadable, or an unfinished ``.*.tmp`` (returned apart)."""
    good, temporary = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if fileformat.is_temporary(path):
            temporary.append(path)
            continue
        if path.suffix == ".safetensors":
            assert probe_file(path).ok, path
            sd = read_state_dict(path)
            for key in sd:
                sd[key]  # every tensor readable
        good.append(path)
    return good, temporary


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return read_adapter(path).tensors


@pytest.fixture(scope="module")
def reference(tmp_path_factory, si):
    """The uninterrupted run's final adapter (and its step-4 state, for comparisons)."""
    root = tmp_path_factory.mktemp("reference")
    _setup(root, si)
    assert _fit(root) == 0
    return _adapter(root / "out" / "chara.safetensors")


def _assert_same_adapter(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ----------------------------------------------------------------------------- kills
@pytest.mark.parametrize(
    "phase,pattern,nth,state_step",
    [
        ("after_rename", "*/out/chara-state.safetensors", 1, 2),  # right after the step-2 save
        ("before_rename", "*/out/chara-step000004.safetensors", 1, 2),  # half-way through the step-4 adapter save
        ("before_rename", "*/out/chara-state.safetensors", 2, 2),  # half-way through the step-4 state save
    ],
    ids=["after-save", "during-adapter-save", "during-state-save"],
)
def test_kill_at_a_save_leaves_loadable_files_and_resume_reproduces_the_run(tmp_path, si, reference, phase, pattern, nth, state_step):
    _setup(tmp_path, si)
    _fit_and_kill(tmp_path, phase, pattern, nth)
    out = tmp_path / "out"
    good, temporary = _check_files(out)
    names = sorted(p.name for p in good if p.parent == out)
    assert "chara.safetensors" not in names and "chara-step000002.safetensors" in names
    if phase == "before_rename":  # the save that was cut short left only its temporary file
        assert len([t for t in temporary if t.parent == out]) == 1
        assert not any(p.name.endswith(".safetensors") for p in temporary)  # no loader lists it
    state = read_training_state(out / "chara-state.safetensors")
    assert state.step == state_step

    for path in temporary:  # left an hour ago: the next run in the folder tidies it away
        os.utime(path, (time.time() - 2 * fileformat.STALE_AFTER_SECONDS,) * 2)
    assert _fit(tmp_path, "--resume", str(out / "chara-state.safetensors")) == 0
    _assert_same_adapter(_adapter(out / "chara.safetensors"), reference)
    assert read_adapter(out / "chara.safetensors").metadata["ss_steps"] == str(STEPS)
    assert _check_files(out)[1] == []


@pytest.mark.parametrize("kind", ["latents", "text"])
def test_kill_during_a_cache_write_leaves_a_cache_the_next_run_uses(tmp_path, si, reference, kind, caplog):
    _setup(tmp_path, si)
    _fit_and_kill(tmp_path, "before_rename", f"*/out/cache/{kind}/*", 2)
    cache = tmp_path / "out" / "cache"
    good, temporary = _check_files(cache)
    assert len(temporary) == 1 and len([p for p in good if f"/{kind}/" in p.as_posix()]) == 1
    assert not list((tmp_path / "out").glob("*.safetensors"))  # killed before training

    os.utime(temporary[0], (time.time() - 2 * fileformat.STALE_AFTER_SECONDS,) * 2)  # left an hour ago
    with caplog.at_level(logging.WARNING):
        assert _fit(tmp_path) == 0
    assert not [r for r in caplog.records if "discarding damaged cache entry" in r.getMessage()]
    _assert_same_adapter(_adapter(tmp_path / "out" / "chara.safetensors"), reference)
    assert _check_files(cache)[1] == []  # the next run tidied it away


def test_resume_refuses_nothing_valid_whatever_the_state_files_first_byte(tmp_path, si, reference):
    """The issue's reproduction: a state whose header length's low byte is 0x80 ('{', '[') resumes."""
    import probe_files as P

    _setup(tmp_path, si)
    assert _fit(tmp_path, "--steps", "2") == 0
    state = tmp_path / "out" / "chara-state.safetensors"
    for low in (0x80, ord("{"), ord("[")):
        P.resave(state, tmp_path / f"state-{low:02x}.safetensors", low, aligned=False)
        assert (tmp_path / f"state-{low:02x}.safetensors").read_bytes()[0] == low
        assert read_training_state(tmp_path / f"state-{low:02x}.safetensors").step == 2
    assert _fit(tmp_path, "--resume", str(tmp_path / "state-80.safetensors")) == 0
    _assert_same_adapter(_adapter(tmp_path / "out" / "chara.safetensors"), reference)


# ----------------------------------------------------------------------------- write failures
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permission-denied"])
@pytest.mark.parametrize("target", ["chara-step000004.safetensors", "chara-state.safetensors"])
def test_a_failed_save_stops_the_run_naming_path_and_cause_and_keeps_the_last_good_files(tmp_path, si, monkeypatch, capsys, code, target):
    cfg = _setup(tmp_path, si)
    out = tmp_path / "out"
    import safetensors.torch as st

    real = st.save_file
    calls = {"n": 0}

    def failing(tensors, filename, metadata=None):
        name = Path(filename).name
        if name.startswith(f".{target}."):
            calls["n"] += 1
            if target.startswith("chara-step") or calls["n"] == 2:  # the adapter at step 4, or the second state save
                with open(filename, "wb") as f:
                    f.write(b"\0" * 100)  # half a file, then the failure
                raise OSError(code, os.strerror(code), filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", failing)
    rc = _fit(cfg.parent)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"cannot write {out / target}" in err and os.strerror(code) in err
    assert ("disk is full" in err) if code == errno.ENOSPC else ("no permission" in err)
    assert "saving at step 4 failed" in err and "Training stopped" in err and "Fix the cause and resume from the state file" in err
    last_good = "chara-step000002.safetensors" if target.startswith("chara-step") else "chara-step000004.safetensors"
    assert f"the last good adapter is {out / last_good}" in err
    assert f"the resume state is {out / 'chara-state.safetensors'} (step 2)" in err
    good, temporary = _check_files(out)
    assert not temporary  # the half-written temporary file was removed
    assert read_training_state(out / "chara-state.safetensors").step == 2
    assert read_adapter(out / "chara-step000002.safetensors").metadata["ss_steps"] == "2"
    assert not (out / "chara.safetensors").exists()


def test_save_error_names_path_and_cause(tmp_path, monkeypatch):
    import safetensors.torch as st

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(SaveError, match=r"cannot write .*x\.safetensors: No space left on device \(the disk is full") as info:
        save_safetensors({"a": torch.ones(2)}, tmp_path / "x.safetensors")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- caches
def test_a_failed_cache_write_falls_back_to_computing_with_one_warning(tmp_path, si, reference, monkeypatch, caplog):
    cfg = _setup(tmp_path, si)
    import safetensors.torch as st

    real = st.save_file

    def failing(tensors, filename, metadata=None):
        if "/cache/" in Path(filename).as_posix():
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", failing)
    with caplog.at_level(logging.WARNING):
        assert _fit(cfg.parent) == 0
    warnings = [r for r in caplog.records if "Caching is off" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    assert not [p for p in (tmp_path / "out" / "cache").rglob("*") if p.is_file()]
    _assert_same_adapter(_adapter(tmp_path / "out" / "chara.safetensors"), reference)


def test_corrupt_cache_entries_are_discarded_and_rebuilt(tmp_path, caplog):
    cache = DiskCache(tmp_path / "cache")
    values = {f"{i:02x}" * 32: torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)}
    for key, value in values.items():
        cache.put("latents", key, value)
    keys = list(values)
    paths = [cache._path("latents", k) for k in keys]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 7])  # truncated
    paths[1].write_bytes(b"<!DOCTYPE html><html>502 Bad Gateway</html>")  # foreign: an error page
    save_safetensors({"value": torch.zeros(4, 8, 8)}, paths[2])  # foreign: valid safetensors, not a cache entry
    paths[3].write_bytes(paths[4].read_bytes())  # another entry's file under this key
    flipped = bytearray(paths[5].read_bytes())
    flipped[-5] ^= 0x40  # one bit of the tensor data
    paths[5].write_bytes(bytes(flipped))

    with caplog.at_level(logging.WARNING):
        for i, key in enumerate(keys):
            if i == 4:
                assert torch.equal(cache.get("latents", key), values[key])  # the untouched entry
                continue
            assert cache.get("latents", key) is None, i  # never read as training data
            assert not paths[i].exists()  # discarded
    assert cache.discarded == 5 and len([r for r in caplog.records if "discarding damaged cache entry" in r.getMessage()]) == 5
    for key in keys:  # rebuilt
        cache.put("latents", key, values[key])
        assert torch.equal(cache.get("latents", key), values[key])


def test_a_run_with_a_corrupted_cache_trains_like_a_clean_one(tmp_path, si, reference, caplog):
    _setup(tmp_path, si)
    assert _fit(tmp_path, "--steps", "1") == 0
    entries = sorted((tmp_path / "out" / "cache").rglob("*.safetensors"))
    assert {p.parent.parent.name for p in entries} == {"latents", "text"} and len(entries) >= 6
    for i, path in enumerate(entries):
        if i % 2 == 0:
            path.write_bytes(path.read_bytes()[:-3])  # truncated
        else:
            path.write_bytes(b'{"error": "this is not a tensor"}' + b" " * 40)  # foreign
    for stale in (tmp_path / "out").glob("chara*.safetensors"):
        stale.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _fit(tmp_path) == 0
    assert len([r for r in caplog.records if "discarding damaged cache entry" in r.getMessage()]) == len(entries)
    _assert_same_adapter(_adapter(tmp_path / "out" / "chara.safetensors"), reference)
    good, temporary = _check_files(tmp_path / "out" / "cache")
    assert set(entries) <= set(good) and not temporary  # rebuilt, complete


# ----------------------------------------------------------------------------- the ComfyUI node
def test_comfyui_server_killed_during_save_every_saves_leaves_no_half_written_lora(tmp_path, si, comfyui_path):
    """A real ComfyUI process (the test harness, this pack loaded by ComfyUI) trains with
    save_every=1 and is SIGKILLed half-way through its second periodic save."""
    loras, data, scratch = tmp_path / "loras", tmp_path / "data", tmp_path / "tmp"
    loras.mkdir()
    scratch.mkdir()
    si.write_image_folder(data, [(64, 64), (64, 64)])
    marker = tmp_path / "paused"
    env = _env(**{
        fileformat.PAUSE_ENV: f"before_rename:1:{marker}:*/loras/killed-step000002.safetensors",
        "TMPDIR": str(scratch),  # the harness's model folders: inside tmp_path, even after a kill
    })  # fmt: skip
    env["PYTHONPATH"] = ""  # the pack is imported by ComfyUI, never from the repository root
    log = open(tmp_path / "comfy.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "comfy_kill_driver.py"), str(comfyui_path), str(loras), str(data)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _kill_when_paused(proc, marker, log, 400, "ComfyUI training with save_every")

    import folder_paths  # ComfyUI's (comfyui_path put it on sys.path): what LoraLoader lists

    good, temporary = _check_files(loras)
    assert [p.name for p in good] == ["killed-step000001.safetensors"]
    assert read_adapter(loras / "killed-step000001.safetensors").metadata["ss_steps"] == "1"
    assert len(temporary) == 1 and temporary[0].name.startswith(".killed-step000002.safetensors.")
    listed = folder_paths.filter_files_extensions(sorted(os.listdir(loras)), folder_paths.supported_pt_extensions)
    assert listed == ["killed-step000001.safetensors"]  # the unfinished file is not offered to LoraLoader


def test_a_failed_save_stops_every_data_parallel_process(tmp_path):
    """Rank 0's save fails: both ranks stop (no rank waits for the main process forever)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_save_fail_worker.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"STOPPED 0: saving at step 2 failed: cannot write {tmp_path / 'ddp-step000002.safetensors'}" in proc.stdout
    assert "STOPPED 1: the main process could not save at step 2" in proc.stdout
    assert "COMPLETED" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp-state.safetensors", "ddp-step000001.safetensors"]
    assert read_training_state(tmp_path / "ddp-state.safetensors").step == 1


def test_comfyui_node_save_failure_is_a_clear_error_and_keeps_the_last_good_file(cui, si, tmp_path, monkeypatch):
    import hdm_comfy_harness as H
    import safetensors.torch as st

    loras = tmp_path / "loras"
    loras.mkdir()
    si.write_image_folder(tmp_path / "data", [(64, 64), (64, 64)])
    real = st.save_file

    def disk_full(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".failing.safetensors."):  # the final save
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", disk_full)
    cui.folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    try:
        prompt = H.train_only_prompt(dataset_folder=str(tmp_path / "data"), save_name="failing", steps=2, save_every=1, learning_rate=0.01)
        result = cui.run(prompt)
    finally:
        cui.folder_paths.folder_names_and_paths["loras"][0].remove(str(loras))
    err = result.error()
    assert err is not None and err["event"] == "execution_error" and err["node_id"] == "2", result.messages
    message = err["exception_message"]
    assert f"cannot write {loras / 'failing.safetensors'}" in message and "the disk is full" in message
    assert f"the last good adapter is {loras / 'failing-step000001.safetensors'}. Fix the cause and train again" in message
    assert sorted(p.name for p in loras.iterdir()) == ["failing-step000001.safetensors"]
    assert read_adapter(loras / "failing-step000001.safetensors").metadata["ss_steps"] == "1"
    monkeypatch.undo()
    ok = cui.run(H.txt2img_prompt(steps=1), {"image": ("8", 0)})  # the server goes on
    assert ok.ok, ok.error()


def test_only_stale_temporaries_of_atomic_writes_are_swept(tmp_path):
    """An interrupted save's ``.<name>.<random>.tmp`` goes once it is an hour old; a save in
    progress (fresh), other dot files and other folders' files stay."""
    old = time.time() - 2 * fileformat.STALE_AFTER_SECONDS
    (tmp_path / "sub").mkdir()
    made = {}
    for key, folder, prefix in (("stale", tmp_path, ".a.safetensors."), ("fresh", tmp_path, ".b.safetensors."),
                                ("nested", tmp_path / "sub", ".c.safetensors.")):  # fmt: skip
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)  # named as atomic_write names them
        os.close(fd)
        made[key] = Path(name)
    others = [tmp_path / ".notes.tmp", tmp_path / "a.safetensors", tmp_path / "x.abcdefgh.tmp"]
    for path in others:
        path.write_bytes(b"keep")
    for path in [made["stale"], made["nested"], *others]:
        os.utime(path, (old, old))
    assert fileformat.sweep_stale_temporaries(tmp_path) == [made["stale"]]
    assert all(p.exists() for p in [made["fresh"], made["nested"], *others])
    assert fileformat.sweep_stale_temporaries(tmp_path, recursive=True) == [made["nested"]]
    assert fileformat.sweep_stale_temporaries(tmp_path / "missing") == []
