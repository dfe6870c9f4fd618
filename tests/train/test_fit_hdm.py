"""``python -m trainer fit`` on HDM files (hdm_core.testing.write_tiny_hdm): no user code, HDM's recipe.

Covers the short config form (``[model] checkpoint / text_encoder``), the built-in VAE and
Qwen3 encoders, HDM's 256-token training text path, previews through the pipeline, exact
resume, and the error messages for missing or wrong files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hdm_core.images import read_png_metadata
from hdm_core.testing import write_tiny_hdm
from hdm_core.text import PAD_TOKEN_ID, load_tokenizer
from hdm_core.train import read_adapter
from hdm_core.train.state import read_training_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hdm_files(tmp_path_factory):
    return write_tiny_hdm(tmp_path_factory.mktemp("weights"))


def _write_dataset(root: Path, si) -> None:
    """kohya layout: 2 images repeated twice in 2_chara, one more at the top level."""
    si.write_image_folder(root / "2_chara", [(64, 64), (64, 80)])
    si.write_image_folder(root, [(72, 64)], seed=3)


def _config(tmp_path: Path, hdm_files, si, **overrides: str) -> Path:
    if not (tmp_path / "data").exists():
        _write_dataset(tmp_path / "data", si)
    sections = {
        "model": f'checkpoint = "{hdm_files["ckpt"]}"\ntext_encoder = "{hdm_files["te"]}"\ndevice = "cpu"',
        "dataset": 'path = "data"\n[dataset.buckets]\nresolution = 64\n[dataset.captions]\nshuffle_tags = true',
        "adapter": 'algo = "lokr"\ndim = 4\nfactor = 4',
        # a constant lr after warm-up, so a 4-step run resumed to 6 can equal a straight 6-step run
        "training": "steps = 4\nbatch_size = 2\ntread_rate = 0.5\nseed = 1\n"
        '[training.optimizer]\nlr = 1e-2\nwarmup_steps = 1\nscheduler = "constant"',
        "output": 'dir = "out"\nname = "chara"\nsave_every = 2\nsave_dtype = "fp32"',
        "sample": 'every = 2\nprompts = ["1girl, smile"]\nnegative = "lowres"\nsteps = 2\nwidth = 64\nheight = 48',
    }
    sections.update(overrides)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(f"[{name}]\n{body}\n" for name, body in sections.items() if body is not None))
    return path


def _fit(*args: str) -> int:
    from trainer.cli import main

    return main(["fit", *map(str, args)])


def test_fit_on_hdm_files_trains_previews_and_resumes_exactly(tmp_path, hdm_files, si):
    cfg = _config(tmp_path, hdm_files, si)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "loss=" in proc.stderr and "dataset: 3 images, 5 samples per epoch" in proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["chara-state.safetensors", "chara-step000002.safetensors", "chara.safetensors"]
    state = read_training_state(out / "chara-state.safetensors")
    assert state.step == 4 and len(state.loss_history) == 4 and all(0 < x < 100 for x in state.loss_history)
    adapter = read_adapter(out / "chara.safetensors")
    assert adapter.metadata["ss_steps"] == "4" and '"text_padding": "max_length"' in adapter.metadata["hdm_fit_config"]
    assert any(k.endswith(".lokr_w1") for k in adapter.tensors)
    for step in (2, 4):
        png = out / "samples" / f"chara-step00000{step}-00.png"
        assert Image.open(png).size == (64, 48)
        meta = read_png_metadata(png)
        assert meta["prompt"] == "1girl, smile" and meta["negative"] == "lowres" and meta["step"] == step
    assert Image.open(out / "samples" / "chara-step000004-00.png").tobytes() != Image.open(
        out / "samples" / "chara-step000002-00.png").tobytes()  # the adapter changed the picture  # fmt: skip

    # resume 4 -> 6 equals an uninterrupted 6-step run (posterior samples and captions included)
    assert _fit(cfg, "--resume", out / "chara-state.safetensors", "--steps", 6) == 0
    straight = _config(tmp_path / "straight", hdm_files, si, sample="every = 0")
    assert _fit(straight, "--steps", 6) == 0
    resumed = read_adapter(out / "chara.safetensors")
    whole = read_adapter(tmp_path / "straight" / "out" / "chara.safetensors")
    assert resumed.metadata["ss_steps"] == whole.metadata["ss_steps"] == "6"
    for k, v in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[k], v, rtol=0, atol=1e-6, msg=k)


def _spy_batches(cfg_path: Path, steps: int = 1):
    """Run the trainer's own setup for ``steps`` steps and record what Qwen3 and the XUT were given."""
    from hdm_core import load_xut
    from hdm_core.train import ImageFolderData, Trainer, scan_image_folder
    from trainer.config import load_config
    from trainer.encoders import build_encoders

    cfg = load_config(cfg_path)
    cpu = torch.device("cpu")
    model = load_xut(cfg.model.checkpoint, dtype=torch.float32)
    encoders = build_encoders(cfg, cpu, torch.float32, ctx_dim=model.config.ctx_dim)
    te_calls, xut_calls = [], []
    encoders.encode_text.te.model.register_forward_pre_hook(lambda m, a, kw: te_calls.append(kw), with_kwargs=True)
    model.register_forward_pre_hook(lambda m, a, kw: xut_calls.append((a[2], kw.get("ctx_mask"))), with_kwargs=True)
    data = ImageFolderData(
        scan_image_folder(cfg.dataset.path), image_encoder=encoders.encode_images, text_encoder=encoders.encode_text,
        buckets=cfg.buckets, captions=cfg.captions, seed=cfg.training.seed,
    )  # fmt: skip
    trainer = Trainer(model, data, cfg.adapter, cfg.training, device=cpu)
    batches = [trainer.local_batch(k)[0] for k in range(steps)]
    with trainer.session():
        for k in range(steps):
            trainer.micro_batch_loss(k).backward()
    return batches, te_calls, xut_calls


def test_padded_text_path_is_hdm_training_recipe(tmp_path, hdm_files, si):
    """256 tokens: caption ids then <|endoftext|> pads; Qwen3 gets the padding mask; the XUT all 256, unmasked."""
    cfg = _config(tmp_path, hdm_files, si, training="steps = 1\nbatch_size = 2\nseed = 4")
    batches, te_calls, xut_calls = _spy_batches(cfg)
    tok = load_tokenizer()
    captions = batches[0].captions
    assert len(captions) == 2 and all(captions)
    ids, mask = te_calls[-1]["input_ids"], te_calls[-1]["attention_mask"]
    assert ids.shape == mask.shape == (2, 256)
    for i, caption in enumerate(captions):
        expected = tok(caption, add_special_tokens=False)["input_ids"]
        n = len(expected)
        assert 0 < n < 256 and ids[i, :n].tolist() == expected
        assert (ids[i, n:] == PAD_TOKEN_ID).all() and mask[i].tolist() == [1] * n + [0] * (256 - n)
    ctx, ctx_mask = xut_calls[-1]
    assert ctx.shape == (2, 256, 32) and ctx_mask is None  # every position, pads included, no mask
    assert batches[0].ctx_mask is None


def test_unpadded_text_option_gives_each_caption_its_own_tokens(tmp_path, hdm_files, si):
    cfg = _config(tmp_path, hdm_files, si, training="steps = 1\nbatch_size = 2\nseed = 4", encoders='text_padding = "none"')
    for i, txt in enumerate(sorted((tmp_path / "data").rglob("*.txt"))):  # three different caption lengths
        txt.write_text(", ".join(si.TAGS[: 1 + 3 * i]))
    batches, te_calls, xut_calls = _spy_batches(cfg)
    tok = load_tokenizer()
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in batches[0].captions]
    assert lengths[0] != lengths[1]  # so the batch needs a key mask
    assert te_calls[-1]["input_ids"].shape == (2, max(lengths))  # padded to the longest only, never to 256
    ctx, ctx_mask = xut_calls[-1]
    assert ctx.shape == (2, max(lengths), 32) and ctx_mask.sum(dim=1).tolist() == lengths


def test_missing_or_wrong_files_name_the_file_and_the_fix(tmp_path, hdm_files, si, capsys):
    from hdm_core.checkpoint import save_safetensors
    from hdm_core.testing import TINY_QWEN3, tiny_qwen3, tiny_xut

    def error(**overrides: str) -> str:
        assert _fit(_config(tmp_path, hdm_files, si, **overrides)) == 2
        return capsys.readouterr().err

    ckpt, te = hdm_files["ckpt"], hdm_files["te"]
    err = error(model='checkpoint = "models/nope.safetensors"')
    assert f"[model] checkpoint = {tmp_path / 'models' / 'nope.safetensors'}: no such file or folder" in err
    assert "hdm-xut-340M-1024px-note.safetensors" in err and "relative to the config file's folder" in err
    err = error(model=f'checkpoint = "{ckpt}"\ntext_encoder = "Qwen3-0.6B"')
    assert "[model] text_encoder = " in err and "no such file or folder" in err and "Qwen/Qwen3-0.6B" in err
    err = error(model=f'checkpoint = "{ckpt}"')
    assert f"[model] text_encoder is not set and the checkpoint {ckpt} holds no text encoder" in err
    err = error(model=f'checkpoint = "{ckpt}"\ntext_encoder = "{ckpt}"')  # the checkpoint is not a Qwen3
    assert f"[model] text_encoder = {ckpt}: " in err and "no Qwen3 text-encoder weights found" in err
    err = error(model=f'checkpoint = "{te}"\ntext_encoder = "{te}"')  # the Qwen3 folder is not an HDM checkpoint
    assert f"[model] checkpoint = {te}: " in err and "no HDM/XUT diffusion-model weights found" in err
    err = error(model=f'checkpoint = "{ckpt}"\ntext_encoder = "{te}"\nvae = "{te / "model.safetensors"}"')
    assert f"[model] vae = {te / 'model.safetensors'}: " in err and "no VAE weights found" in err

    bare = save_safetensors({f"unet.model.{k}": v for k, v in tiny_xut(0).state_dict().items()}, tmp_path / "bare.safetensors")
    err = error(model=f'checkpoint = "{bare}"\ntext_encoder = "{te}"')
    assert f"[model] checkpoint = {bare} holds no VAE (no vae.* keys" in err and "Set [model] vae = " in err

    wide = tiny_qwen3(3, {**TINY_QWEN3, "hidden_size": 48})
    save_safetensors({f"model.{k}": v for k, v in wide.state_dict().items() if "rotary" not in k}, tmp_path / "wide" / "model.safetensors")
    err = error(model=f'checkpoint = "{ckpt}"\ntext_encoder = "{tmp_path / "wide"}"')
    assert "the text encoder's width is 48 but the checkpoint's model takes 32-wide text" in err

    err = error(model=f'path = "{ckpt}"')
    assert "[model] path is now called checkpoint" in err
    err = error(encoders='text_padding = "longest"')
    assert "text_padding must be \"max_length\"" in err and "or \"none\"" in err
    err = error(encoders='vae_sample = "mean"')
    assert "vae_sample must be true (posterior sample, HDM's recipe) or false (posterior mean), got 'mean'" in err
