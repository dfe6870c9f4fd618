"""``python -m trainer``: config parsing, a real headless run, resume, DDP under torchrun, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdm_core.checkpoint import save_safetensors
from hdm_core.train import read_adapter

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), OMP_NUM_THREADS="1")


def _setup(tmp_path: Path, si, **overrides: str) -> Path:
    model = si.tiny_xut(0)
    save_safetensors({f"unet.model.{k}": v for k, v in model.state_dict().items()}, tmp_path / "tiny_hdm.safetensors")
    si.write_image_folder(tmp_path / "data" / "2_chara", [(64, 64), (72, 64), (64, 64)])
    si.write_image_folder(tmp_path / "data", [(64, 80)], seed=3)
    sections = {
        "model": 'checkpoint = "tiny_hdm.safetensors"\ndevice = "cpu"',
        "encoders": 'image = "standins:load_tiny_vae"\ntext = "standins:load_tiny_te"',
        "dataset": 'path = "data"\ncache_latents = true\ncache_text = true\n[dataset.buckets]\nresolution = 64\n'
        "[dataset.captions]\nshuffle_tags = true\ncaption_dropout = 0.1",
        "adapter": 'algo = "lokr"\ndim = 4\nfactor = 4\npreset = "full"',
        "training": "steps = 4\nbatch_size = 2\ntread_rate = 0.5\nseed = 1\n[training.optimizer]\nlr = 1e-2\nwarmup_steps = 1",
        "output": 'dir = "out"\nname = "chara"\nsave_every = 2\nsave_dtype = "fp32"',
        "sample": 'every = 2\nprompts = ["1girl, smile"]\nsteps = 3\nwidth = 64\nheight = 64',
    }
    sections.update(overrides)
    text = "\n".join(f"[{name}]\n{body}\n" for name, body in sections.items())
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    return cfg


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_example_config_is_valid_and_documents_every_option():
    from hdm_core.train import AdapterConfig, CaptionConfig, OptimizerConfig, TimestepConfig
    from hdm_core.train.buckets import BucketConfig
    from trainer.config import EncoderSection, ModelSection, SampleSection, load_config

    example = REPO / "trainer" / "example.toml"
    cfg = load_config(example)
    assert cfg.adapter.algo == "lokr" and cfg.training.tread_rate == 0.5 and cfg.buckets.mode == "bucket"
    # the short form: HDM's files only, built-in encoders with HDM's training text encoding
    assert cfg.model.checkpoint.endswith("hdm-xut-340M-1024px-note.safetensors") and cfg.model.text_encoder.endswith("Qwen3-0.6B")
    assert cfg.encoders.image == cfg.encoders.text == "" and cfg.encoders.text_padding == "max_length"
    assert cfg.encoders.text_max_length == 256 and cfg.encoders.vae_sample
    text = example.read_text()
    for cls in (ModelSection, EncoderSection, SampleSection, AdapterConfig, CaptionConfig, OptimizerConfig, TimestepConfig, BucketConfig):
        for field in cls.__dataclass_fields__:
            assert f"{field} =" in text or f"# {field} =" in text, f"example.toml does not document {cls.__name__}.{field}"


def test_headless_fit_trains_saves_samples_and_resumes(tmp_path, si):
    cfg = _setup(tmp_path, si)
    proc = _run(["-m", "trainer", "fit", str(cfg)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["chara-state.safetensors", "chara-step000002.safetensors", "chara.safetensors"]
    assert (out / "samples" / "chara-step000002-00.png").is_file() and (out / "samples" / "chara-step000004-00.png").is_file()
    assert "loss=" in proc.stderr and "lr=" in proc.stderr and "it_s=" in proc.stderr
    assert list((out / "cache" / "latents").rglob("*.safetensors"))
    file = read_adapter(out / "chara.safetensors")
    assert file.metadata["ss_steps"] == "4" and file.metadata["ss_num_train_images"] == "4"
    assert '"tread_rate": 0.5' in file.metadata["hdm_train_config"] and "ss_dataset_dirs" in file.metadata

    from trainer.cli import main  # in-process this time (a subprocess costs seconds of imports)

    sys.path.insert(0, str(HERE))  # the config's encoder factories live in standins
    # A known Ctrl-C handler first: CI may start the suite with SIGINT ignored (nohup, `&`).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["fit", str(cfg), "--resume", str(out / "chara-state.safetensors"), "--steps", "6"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C handling was put back
    finally:
        signal.signal(signal.SIGINT, outer)
        sys.path.remove(str(HERE))
    assert read_adapter(out / "chara.safetensors").metadata["ss_steps"] == "6"


def test_ddp_under_torchrun_matches_a_single_process(tmp_path, si):
    single = _setup(tmp_path / "single", si, sample="every = 0")
    double = _setup(tmp_path / "ddp", si, sample="every = 0", training=(
        "steps = 3\nbatch_size = 1\ntread_rate = 0.5\nseed = 1\n[training.optimizer]\nlr = 1e-2\nwarmup_steps = 1"))  # fmt: skip
    from trainer.cli import main

    single.write_text(single.read_text().replace("steps = 4", "steps = 3"))
    sys.path.insert(0, str(HERE))
    try:
        assert main(["fit", str(single)]) == 0
    finally:
        sys.path.remove(str(HERE))
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer", "fit", str(double)], double.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a = read_adapter(single.parent / "out" / "chara.safetensors")
    b = read_adapter(double.parent / "out" / "chara.safetensors")
    assert b.metadata["ss_num_processes"] == "2" and b.metadata["ss_batch_size_per_device"] == "1"
    for k, v in a.tensors.items():
        assert float((b.tensors[k] - v).abs().max()) <= 1e-4 * max(1.0, float(v.abs().max())), k


def test_cli_errors_are_one_clear_line(tmp_path, si, capsys):
    from trainer.cli import main

    cfg = _setup(tmp_path, si, output='dir = "out"\nnmae = "typo"')
    assert main(["fit", str(cfg)]) == 2
    assert "error: [output]: unknown key(s) nmae" in capsys.readouterr().err
    cfg = _setup(tmp_path, si, dataset='path = "nowhere"')
    assert main(["fit", str(cfg)]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    cfg = _setup(tmp_path, si, training="steps = 2\nbatch_size = 16")
    assert main(["fit", str(cfg)]) == 2
    assert "the dataset is too small: 4 images (7 samples with repeats) cannot fill one batch of 16" in capsys.readouterr().err
    cfg = _setup(tmp_path, si, encoders='image = "standins:no_such"')
    assert main(["fit", str(cfg)]) == 2
    assert "standins has no function no_such" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_convert_command(tmp_path, capsys):
    from trainer.cli import main

    sd = {
        "lycoris_model_backbone_enc_blocks_0_0_attn_qkv.lokr_w1": torch.ones(4, 4),
        "lycoris_model_backbone_enc_blocks_0_0_attn_qkv.lokr_w2": torch.ones(24, 8),
        "lycoris_model_backbone_enc_blocks_0_0_attn_qkv.alpha": torch.tensor(1.0),
        "model.ctx_proj.weight": torch.zeros(2, 2),
    }
    torch.save(sd, tmp_path / "epoch=3.pt")
    assert main(["convert", str(tmp_path / "epoch=3.pt"), str(tmp_path / "out.safetensors"), "--dtype", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert "3 tensors for 1 modules" in printed and "dropped 1 non-adapter tensors: model.ctx_proj.weight" in printed
    tensors = read_adapter(tmp_path / "out.safetensors").tensors
    assert tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.lokr_w1"].dtype == torch.bfloat16
    assert tensors["lora_unet_backbone_enc_blocks_0_0_attn_qkv.alpha"].dtype == torch.float32


def test_sample_sizes_follow_the_generators_rule():
    """[sample] sizes: any multiple of 8 px from 16 px on (the model pads to its patch grid), as in generate."""
    import tomllib

    from trainer.config import ConfigError, parse_config

    data = tomllib.loads((REPO / "trainer" / "example.toml").read_text())
    data.setdefault("sample", {}).update(width=1000, height=744)
    cfg = parse_config(data, base=REPO / "trainer")
    assert (cfg.sample.width, cfg.sample.height) == (1000, 744)
    data["sample"]["width"] = 1001
    with pytest.raises(ConfigError, match=r"\[sample\] width 1001 is not a multiple of 8 .* try 1000 or 1008"):
        parse_config(data, base=REPO / "trainer")
