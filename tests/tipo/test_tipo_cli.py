"""The ``tipo`` command: as a subcommand, on its own, and as ``python -m hdm_core.tipo``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from hdm_core import tipo
from hdm_core.tipo import cli

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--tag-length", "very_short", "--nl-length", "very_short", "--max-new-tokens", "8", "--max-retry", "0", "--allow-short", "--device", "cpu"]


def test_format_only_json(capsys):
    rc = cli.main(["--format-only", "--tags", "smile, izuna (blue archive), 1girl, (masterpiece:1.2)", "--nl", "She smiles.", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt"] == "1girl,\nizuna \\(blue archive\\),\n\nsmile,\n\nShe smiles.\n\n(masterpiece:1.2)"
    assert data["prompt_unescaped"] == "1girl,\nizuna (blue archive),\n\nsmile,\n\nShe smiles.\n\n(masterpiece:1.2)"
    assert data["categories"]["characters"] == ["izuna (blue archive)"] and data["seed"] is None


def test_subcommand_of_a_bigger_cli(capsys, tiny_tipo_dir):
    parser = argparse.ArgumentParser(prog="python -m hdm_core")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    args = parser.parse_args(["tipo", "--models-dir", str(tiny_tipo_dir.parent), "--tags", "1girl, izuna (blue archive)", "--seed", "3", "--no-escape", *QUICK])
    assert args.func(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("1girl,\nizuna (blue archive)")
    assert args.func(args) == 0
    assert capsys.readouterr().out == first  # same seed, same prompt
    tipo.clear_cache()


def test_errors_go_to_stderr_with_exit_code_2(capsys, tmp_path):
    assert cli.main(["--tags", "1girl", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: No TIPO model found in {tmp_path}. Download a TIPO model into it")
    assert cli.main(["--format-only", "--template", "<|tags|>"]) == 2
    assert "unknown placeholder(s) in the format template: <|tags|>" in capsys.readouterr().err


def test_default_model_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv(cli.MODELS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert cli.default_model_dirs() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv(cli.MODELS_ENV)
    assert cli.default_model_dirs() == [Path("models") / "tipo"]


def test_python_dash_m(tiny_tipo_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), HDM_TIPO_MODELS=str(tiny_tipo_dir.parent))
    cmd = [sys.executable, "-m", "hdm_core.tipo", "--tags", "1girl, (smile:1.2)", "--nl", "A girl (smiling).", "--json", *QUICK]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert proc.stderr.strip().splitlines()[-1] == f"seed: {data['seed']}"  # a random seed is reported
    assert "(smile:1.2)" in data["prompt"] and "A girl \\(smiling\\)" in data["prompt"]
    assert data["categories"]["special"] == ["1girl"]
