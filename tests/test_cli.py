"""``python -m hdm_core generate`` on tiny random weights: PNGs with every parameter in
their metadata, reproducibility, batches and prompt files, weight discovery, opt-in
download, and errors that say what is wrong and what to do."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from hdm_core import cli
from hdm_core.images import read_png_metadata
from hdm_core.pipeline import GenerationParams, default_dtype
from hdm_core.testing import write_tiny_hdm
from hdm_core.weights import HDM_FILE, QWEN3_DIR, WeightsNotFound, resolve_weights

REPO = Path(__file__).resolve().parents[1]
FAST = ["--width", "32", "--height", "48", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_hdm(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No ComfyUI, no Hugging Face cache and an empty working folder, whatever the machine has."""
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)


def _run(argv, capsys):
    code = cli.main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _pixels(path) -> bytes:
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_subprocess_writes_png_with_every_parameter(tiny, tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "out" / "image.png"
    args = ["generate", "--prompt", "1girl, solo", "--negative", "lowres", "--ckpt", str(tiny["ckpt"]),
            "--te", str(tiny["te"]), "--seed", "5", "--camera-x", "0.1", "--zoom", "1.2", "--sampler", "heun", *FAST]
    cmd = [sys.executable, "-m", "hdm_core", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (32, 48) and im.mode == "RGB"
        assert "Negative prompt: lowres" in im.text["parameters"]
    meta = read_png_metadata(out)
    for f in dataclasses.fields(GenerationParams):
        if f.name != "extra":
            assert f.name in meta, f.name
    assert meta["prompt"] == "1girl, solo" and meta["negative"] == "lowres" and meta["seed"] == 5
    assert (meta["width"], meta["height"], meta["steps"], meta["sampler"]) == (32, 48, 2, "heun")
    assert (meta["camera_x"], meta["zoom"], meta["cfg"]) == (0.1, 1.2, 3.0)
    assert meta["model"] == tiny["ckpt"].name and meta["text_encoder"] == tiny["te"].name
    # auto dtype: bf16 where this CPU has native bf16 math (AVX512-BF16/AMX), else fp32
    assert meta["dtype"] == str(default_dtype(torch.device("cpu"))).removeprefix("torch.") and meta["device"] == "cpu"
    # the same arguments in another process give the same pixels
    assert cli.main([*args, "--out", "again.png"]) == 0, capsys.readouterr().err
    assert _pixels(tmp_path / "again.png") == _pixels(out)


def test_prompt_file_batches_seeds_and_naming(tiny, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(
        "# my prompts\n1girl, red hair\n\n  1boy, blue sky  \n1girl, red hair\n", encoding="utf-8"
    )
    argv = ["--prompt-file", "prompts.txt", "--batch-count", "2", "--batch-size", "2", "--seed", "100",
            "-o", "out/run.png", "--ckpt", str(tiny["ckpt"]), "--te", str(tiny["te"]), *FAST]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    files = [Path(line) for line in out.split()]
    assert files == [Path("out") / f"run-{i:04d}.png" for i in range(12)]
    metas = [read_png_metadata(f) for f in files]
    assert [m["prompt"] for m in metas] == ["1girl, red hair"] * 4 + ["1boy, blue sky"] * 4 + ["1girl, red hair"] * 4
    assert [m["seed"] for m in metas] == [100, 100, 101, 101] * 3
    assert [m["batch_index"] for m in metas] == [0, 1] * 6
    assert [m["batch_size"] for m in metas] == [2] * 12
    px = [_pixels(f) for f in files]
    assert px[8:12] == px[0:4]  # same prompt, same seed: same images
    assert px[0] != px[1]  # two images of one batch: different noise
    assert px[0] != px[2]  # next run: next seed
    assert px[0] != px[4]  # other prompt, same seed


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["-p", "x", "--width", "1001"], 2, "width 1001 is not a multiple of 8"),
        (["-p", "x", "--height", "44"], 2, "height 44 is not a multiple of 8.*try 40 or 48"),
        (["-p", "x", "--height", "8"], 2, "height 8 is too small.*at least 16 px"),
        (["-p", "x", "--sampler", "ddim"], 2, "invalid choice: 'ddim'"),
        (["-p", "x", "--steps", "0"], 2, "--steps: must be >= 1"),
        (["-p", "x", "--seed", "abc"], 2, "--seed: expected a whole number"),
        (["-p", "x", "--zoom", "0"], 2, "zoom must be > 0"),
        (["-p", "x", "--tread-gamma-uncond", "1.5"], 2, r"tread-gamma-uncond must be in \[0, 1\)"),
        (["-p", "x", "--cfg", "lots"], 2, "--cfg: expected a number"),
        (["-p", "x", "-o", "image.jpg"], 2, "must be a .png file"),
        ([], 2, "give a prompt: --prompt 'TEXT' or --prompt-file FILE"),
        (["--prompt-file", "missing.txt"], 2, "--prompt-file missing.txt: no such file"),
        (["-p", "x", "--device", "nonsense"], 2, "--device nonsense: not a device name"),
        pytest.param(["-p", "x", "--device", "cuda"], 2, "sees no CUDA GPU; use --device cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
        (["-p", "x", "--ckpt", "nowhere/model.safetensors"], 1,
         f"--ckpt nowhere/model.safetensors: no such file or folder.*{HDM_FILE}"),
        (["-p", "x", "--te", "nowhere/qwen"], 1, "--te nowhere/qwen: no such file or folder.*Qwen/Qwen3-0.6B"),
    ],
)
def test_bad_arguments_are_explained(argv, code, message, capsys):
    try:
        got = cli.main(["generate", *argv])
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    err = capsys.readouterr().err
    assert got == code
    assert re.search(message, err, re.S), err


def test_wrong_files_are_explained(tiny, capsys):
    code, _, err = _run(["-p", "x", "--ckpt", str(tiny["te"]), "--te", str(tiny["te"]), *FAST], capsys)
    assert code == 1 and "no HDM/XUT diffusion-model weights found" in err and "Qwen3 text encoder" in err
    code, _, err = _run(["-p", "x", "--ckpt", str(tiny["ckpt"]), "--te", str(tiny["ckpt"]), *FAST], capsys)
    assert code == 1 and "no Qwen3 text-encoder weights found" in err and "Qwen/Qwen3-0.6B" in err


def test_offline_without_weights_says_what_to_download(capsys):
    code, out, err = _run(["-p", "1girl", *FAST], capsys)
    assert code == 1 and out == ""
    for text in (HDM_FILE, "https://huggingface.co/KBlueLeaf/HDM-xut-340M-anime", "./models/",
                 "<ComfyUI>/models/checkpoints/", "Qwen/Qwen3-0.6B", f"./models/{QWEN3_DIR}/",
                 "--download", "--ckpt PATH", "--te PATH"):
        assert text in err, text


def test_finds_weights_in_models_folder(tiny, tmp_path, capsys):
    (tmp_path / "models").mkdir()
    shutil.copy(tiny["ckpt"], tmp_path / "models" / HDM_FILE)
    shutil.copytree(tiny["te"], tmp_path / "models" / QWEN3_DIR)
    code, out, err = _run(["-p", "1girl", "--seed", "1", *FAST], capsys)
    assert code == 0, err
    meta = read_png_metadata(Path(out.strip()))
    assert meta["model"] == HDM_FILE and meta["text_encoder"] == QWEN3_DIR


def test_finds_weights_in_a_comfyui_models_folder(tiny, tmp_path, monkeypatch):
    models = tmp_path / "ComfyUI" / "models"
    (models / "checkpoints" / "hdm").mkdir(parents=True)
    (models / "text_encoders").mkdir(parents=True)
    shutil.copy(tiny["ckpt"], models / "checkpoints" / "hdm" / "hdm-xut-340M-768px-note.safetensors")
    shutil.copy(tiny["te"] / "model.safetensors", models / "text_encoders" / "qwen_3_06b_base.safetensors")  # Anima's: not HDM's
    shutil.copy(tiny["te"] / "model.safetensors", models / "text_encoders" / "qwen3-0.6b.safetensors")
    paths = resolve_weights(comfyui=tmp_path / "ComfyUI", models_dir="models")
    assert paths.ckpt == models / "checkpoints" / "hdm" / "hdm-xut-340M-768px-note.safetensors"
    assert paths.te == models / "text_encoders" / "qwen3-0.6b.safetensors"
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))  # the same via the environment
    assert resolve_weights(models_dir="models") == paths


def test_finds_text_encoder_in_hf_cache(tiny, tmp_path):
    snap = tmp_path / "hf-home" / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "abc123"
    shutil.copytree(tiny["te"], snap)
    assert resolve_weights(ckpt=tiny["ckpt"]).te == snap
    with pytest.raises(WeightsNotFound):
        resolve_weights(ckpt=tiny["ckpt"], use_hf_cache=False)


def test_download_is_opt_in_and_fetches_the_released_files(tiny, tmp_path, monkeypatch):
    calls = []

    def hf_hub_download(repo_id, filename, local_dir):
        calls.append(("file", repo_id, filename))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny["ckpt"], target)
        return str(target)

    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append(("repo", repo_id, tuple(allow_patterns)))
        shutil.copytree(tiny["te"], local_dir)
        return str(local_dir)

    fake = types.ModuleType("huggingface_hub")
    fake.hf_hub_download, fake.snapshot_download = hf_hub_download, snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)

    with pytest.raises(WeightsNotFound, match="--download"):
        resolve_weights(models_dir="models")
    assert calls == []  # never without being asked
    paths = resolve_weights(models_dir="models", download=True)
    assert calls == [("file", "KBlueLeaf/HDM-xut-340M-anime", HDM_FILE),
                     ("repo", "Qwen/Qwen3-0.6B", ("model*.safetensors", "model.safetensors.index.json", "config.json"))]
    assert paths.ckpt == Path("models") / HDM_FILE and paths.te == Path("models") / QWEN3_DIR
    calls.clear()
    assert resolve_weights(models_dir="models", download=True) == paths and calls == []  # found locally now


def test_failed_download_is_explained(monkeypatch):
    fake = types.ModuleType("huggingface_hub")

    def offline(*a, **k):
        raise OSError("no network")

    fake.hf_hub_download = fake.snapshot_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(WeightsNotFound, match=r"download failed \(OSError: no network\)(.|\n)*" + HDM_FILE) as exc:
        resolve_weights(models_dir="models", download=True)
    assert "Add --download" not in str(exc.value)


def test_prompt_hook_extension_point(tiny, tmp_path, capsys, monkeypatch):
    class Shout:
        def add_arguments(self, parser):
            parser.add_argument("--shout", action="store_true")

        def __call__(self, prompt, params, args):
            assert isinstance(params, GenerationParams)
            return prompt.upper() + "!" if args.shout else prompt

    monkeypatch.setattr(cli, "PROMPT_HOOKS", [Shout()])
    code, out, err = _run(["-p", "1girl", "--shout", "--ckpt", str(tiny["ckpt"]), "--te", str(tiny["te"]), *FAST], capsys)
    assert code == 0, err
    meta = read_png_metadata(Path(out.strip()))
    assert meta["prompt"] == "1GIRL!" and meta["prompt_original"] == "1girl"
    assert isinstance(meta["seed"], int) and 0 <= meta["seed"] < 2**32  # no --seed: a random one, recorded


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "generate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_generate_tipo_expands_the_prompt_with_the_image_seed(tiny, tmp_path, capsys, monkeypatch):
    import hdm_core.tipo.runner as runner

    calls = []

    def fake_expand(tags, nl, *, model, seed, model_dirs, device, settings, escape):
        calls.append(dict(tags=tags, nl=nl, model=model, seed=seed, escape=escape, size=(settings.width, settings.height)))
        return f"{tags}, izuna (blue archive), masterpiece. {nl}"

    monkeypatch.setattr(runner, "expand_prompt", fake_expand)
    argv = ["-p", "1girl", "--tipo", "tipo-200m", "--tipo-nl", "she smiles", "--seed", "5",
            "--ckpt", str(tiny["ckpt"]), "--te", str(tiny["te"]), *FAST]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert calls == [dict(tags="1girl", nl="she smiles", model="tipo-200m", seed=5, escape=False, size=(32, 48))]
    meta = read_png_metadata(Path(out.strip()))
    assert meta["prompt"] == "1girl, izuna (blue archive), masterpiece. she smiles"
    assert meta["prompt_original"] == "1girl"


def test_generate_tipo_errors_are_reported(tiny, capsys):
    argv = ["-p", "1girl", "--tipo", "no-such-model", "--ckpt", str(tiny["ckpt"]), "--te", str(tiny["te"]), *FAST]
    code, out, err = _run(argv, capsys)
    assert code == 1
    assert "no-such-model" in err and "models/tipo" in err


def test_tipo_subcommand_format_only(capsys):
    code = cli.main(["tipo", "--format-only", "--tags", "1girl, izuna (blue archive)"])
    out = capsys.readouterr().out
    assert code == 0 and "izuna \\(blue archive\\)" in out
