"""The whole TIPO path with a tiny random LLaMA from disk, model finding, GGUF handling, clear errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hdm_core import tipo
from hdm_core.tipo import loader

REPO = Path(__file__).resolve().parents[2]
QUICK = tipo.TipoSettings(tag_length="very_short", nl_length="very_short", max_new_tokens=12, max_retry=0, require_length=False)


@pytest.fixture(autouse=True)
def _fresh_cache():
    tipo.clear_cache()
    yield
    tipo.clear_cache()


def test_tiny_tipo_runs_the_whole_path(tiny_tipo_dir):
    models = tipo.find_models([tiny_tipo_dir.parent])
    assert models == {"tiny-tipo": tiny_tipo_dir}
    backend = tipo.load_tipo(tipo.resolve_model("tiny-tipo", [tiny_tipo_dir.parent]), device="cpu")
    assert backend.kind == "transformers" and backend.dtype == torch.float32  # fp32 on CPU, not kgen's fp16
    assert backend.model.generation_config.use_cache is True  # TIPO's config says false

    lengths: list[int] = []
    hook = backend.model.model.register_forward_pre_hook(lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    states = (random.getstate(), torch.get_rng_state().clone(), np.random.get_state()[1].copy())
    try:
        result = tipo.expand(backend, "1girl, izuna (blue archive), (smile:1.2)", "A girl (smiling).", seed=11, settings=QUICK)
        again = tipo.expand(backend, "1girl, izuna (blue archive), (smile:1.2)", "A girl (smiling).", seed=11, settings=QUICK)
    finally:
        hook.remove()
    assert (random.getstate(), np.random.get_state()[1].tolist()) == (states[0], states[2].tolist())
    assert torch.equal(torch.get_rng_state(), states[1])

    # KV cache: after the prompt, every forward sees one new token
    first_pass = lengths[: 1 + result.passes[0].new_tokens - 1]
    assert first_pass[0] == result.passes[0].prompt_tokens and set(first_pass[1:]) == {1}
    assert len(result.passes) == 2 and all(0 < p.new_tokens <= 12 for p in result.passes)
    assert [p.output for p in again.passes] == [p.output for p in result.passes]
    assert again.prompt == result.prompt
    # the random model writes gibberish, but the user's prompt comes through, escaped
    assert "izuna \\(blue archive\\)" in result.prompt and "(smile:1.2)" in result.prompt
    assert "A girl \\(smiling\\)" in result.prompt
    other = tipo.expand(backend, "1girl", "", seed=12, settings=QUICK)
    seed11 = tipo.expand(backend, "1girl", "", seed=11, settings=QUICK)
    assert [p.output for p in other.passes] != [p.output for p in seed11.passes]


def test_tiny_tipo_bf16_and_cache_reuse(tiny_tipo_dir):
    backend = tipo.load_tipo(tiny_tipo_dir, device="cpu", dtype="bf16")
    assert backend.dtype == torch.bfloat16
    assert tipo.load_tipo(tiny_tipo_dir, device="cpu", dtype="bf16") is backend
    assert tipo.load_tipo(tiny_tipo_dir, device="cpu") is not backend  # another dtype: reloaded
    result = tipo.expand(backend, "1girl", "", seed=3, settings=QUICK, template="<|general|>")
    assert result.passes[0].new_tokens > 0


def test_random_model_misses_the_length_target(tiny_tipo_dir):
    backend = tipo.load_tipo(tiny_tipo_dir, device="cpu")
    settings = tipo.TipoSettings(tag_length="very_long", max_new_tokens=4, max_retry=1)
    with pytest.raises(tipo.TipoLengthError, match=r"where tag_length='very_long' asks for at least 54, after 2 attempt\(s\) \(max_retry=1\)"):
        tipo.expand(backend, "1girl", "", seed=1, settings=settings, template="<|general|>")


def test_expand_prompt_hook(tiny_tipo_dir):
    prompt = tipo.expand_prompt("1girl, izuna (blue archive)", "", model="tiny-tipo", model_dirs=[tiny_tipo_dir.parent], seed=5, device="cpu", settings=QUICK)
    assert prompt.startswith("1girl,\nizuna \\(blue archive\\)")
    plain = tipo.expand_prompt("1girl, izuna (blue archive)", "", model=tiny_tipo_dir, seed=5, device="cpu", settings=QUICK, escape=False)
    assert plain == prompt.replace("\\(", "(").replace("\\)", ")")


# --------------------------------------------------------------------------- finding models


def test_find_models_lists_folders_and_gguf_files(tmp_path, tiny_tipo_dir):
    root = tmp_path / "tipo"
    shutil.copytree(tiny_tipo_dir, root / "KBlueLeaf" / "TIPO-200M-ft2")
    (root / "TIPO-200M-ft2-F16.gguf").write_bytes(b"GGUF")
    (root / "notes.txt").write_text("x")
    (root / "empty").mkdir()
    assert list(tipo.find_models([root, tmp_path / "missing"])) == ["KBlueLeaf/TIPO-200M-ft2", "TIPO-200M-ft2-F16.gguf"]
    with pytest.raises(tipo.TipoModelError, match="several TIPO models found"):
        tipo.resolve_model("", [root])
    with pytest.raises(tipo.TipoModelError, match="TIPO model 'nope' not found in .*; available: KBlueLeaf/TIPO-200M-ft2, TIPO-200M-ft2-F16.gguf"):
        tipo.resolve_model("nope", [root])


def test_no_model_found_says_where_and_which_files(tmp_path):
    empty = tmp_path / "models" / "tipo"
    empty.mkdir(parents=True)
    with pytest.raises(tipo.TipoModelError) as err:
        tipo.resolve_model("", [empty])
    message = str(err.value)
    assert message.startswith(f"No TIPO model found in {empty}. Download a TIPO model into it")
    for needed in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", ".gguf", "llama-cpp-python", "KBlueLeaf/TIPO-200M-ft2"):
        assert needed in message


def test_incomplete_folder_names_missing_files(tmp_path, tiny_tipo_dir):
    broken = shutil.copytree(tiny_tipo_dir, tmp_path / "TIPO-200M")
    (broken / "tokenizer.model").unlink()
    for f in broken.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(tipo.TipoModelError, match=r"TIPO model folder .*TIPO-200M lacks model.safetensors, tokenizer.model\. A TIPO folder holds config.json"):
        tipo.load_tipo(broken, device="cpu")


def test_pickle_weights_unsupported_and_tipo_v2_folders_explained(tmp_path, tiny_tipo_dir):
    pickled = shutil.copytree(tiny_tipo_dir, tmp_path / "pickled")
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(tipo.TipoModelError, match="only pickle weights"):
        tipo.load_tipo(pickled, device="cpu")
    v2 = shutil.copytree(tiny_tipo_dir, tmp_path / "TIPOv2")
    config = json.loads((v2 / "config.json").read_text())
    config.update(model_type="tipo_moe", architectures=["TIPOMoEForCausalLM"])
    (v2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(tipo.TipoModelError, match=r"is a 'tipo_moe' model \(TIPOMoEForCausalLM\).*need their \.gguf file and llama-cpp-python"):
        tipo.load_tipo(v2, device="cpu")


def test_tokenizer_without_tipo_tokens_is_rejected(tmp_path, tiny_tipo_dir):
    plain = shutil.copytree(tiny_tipo_dir, tmp_path / "plain")
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {}
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(tipo.TipoModelError, match=r"is not TIPO's: it lacks <\|empty\|>, <\|very_short\|>"):
        tipo.load_tipo(plain, device="cpu")


def test_devices_and_dtypes():
    assert tipo.resolve_device("cpu") == torch.device("cpu")
    assert tipo.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert tipo.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert tipo.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(tipo.TipoModelError, match="dtype 'int8' is not supported"):
        tipo.resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(tipo.TipoModelError, match="is not a torch device"):
        tipo.resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(tipo.TipoModelError, match="no CUDA GPU; use cpu or auto"):
            tipo.resolve_device("cuda")


# --------------------------------------------------------------------------- GGUF


def test_gguf_without_llama_cpp_is_a_clear_error(tmp_path, monkeypatch):
    gguf = tmp_path / "TIPO-200M-ft2-F16.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loader, "llama_cpp", lambda: (None, "it is not installed (No module named 'llama_cpp')"))
    with pytest.raises(tipo.TipoDependencyError) as err:
        tipo.load_tipo(gguf, device="cpu")
    assert str(err.value).startswith(
        "TIPO model 'TIPO-200M-ft2-F16.gguf' is a .gguf file, which needs llama-cpp-python, but it is not installed "
        "(No module named 'llama_cpp'). Install it into the Python that runs ComfyUI"
    )
    assert "use the transformers folder of the same model instead" in str(err.value)


def test_gguf_runs_through_llama_cpp(tmp_path, monkeypatch):
    """The GGUF backend with a stand-in llama_cpp: arguments passed, seeds, prompt + completion parsed."""
    calls = []

    class Llama:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def create_completion(self, prompt, **kwargs):
            calls.append((prompt, kwargs))
            for criterion in kwargs["stopping_criteria"] or []:
                criterion([1, 2], None)
            text = ", solo, glasses, halo, sensei (blue archive), smile, fox ears" if prompt.endswith(("1girl", "izuna (blue archive)")) else " A fox girl smiles."
            return {"choices": [{"text": text}], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}

    fake = types.SimpleNamespace(Llama=Llama, StoppingCriteriaList=list)
    monkeypatch.setattr(loader, "llama_cpp", lambda: (fake, ""))
    gguf = tmp_path / "tipo.gguf"
    gguf.write_bytes(b"GGUF")
    backend = tipo.load_tipo(gguf, device="cpu")
    assert backend.kind == "gguf"
    assert backend.llama.kwargs == {"model_path": str(gguf), "n_ctx": 2048, "n_gpu_layers": 0, "verbose": False}
    steps = []
    result = tipo.expand(backend, "1girl", "", seed=2**32 + 5, settings=tipo.TipoSettings(tag_length="very_short", nl_length="very_short"), on_step=lambda: steps.append(1))
    # new tags are shuffled (as kgen does) with the seeded Python RNG: fixed for this seed
    assert result.prompt == "1girl,\nsensei \\(blue archive\\),\n\nhalo, solo, fox ears, smile, glasses,\n\nA fox girl smiles."
    assert result.categories["generated"] == "A fox girl smiles"
    prompt, kwargs = calls[0]
    assert prompt.endswith("tag: 1girl")
    assert kwargs["seed"] == 5 and kwargs["min_p"] == 0.05 and kwargs["top_k"] == 80 and kwargs["max_tokens"] == 512
    assert len(steps) == len(calls) == 2


# --------------------------------------------------------------------------- import safety (fresh interpreters)


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (extra_path, REPO) if p))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)


def test_import_is_light_and_a_broken_llama_cpp_cannot_break_anything(tmp_path):
    broken = tmp_path / "site" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise OSError('libllama.so: cannot open shared object file')\n")
    proc = _run(
        """
        import sys
        import hdm_core.tipo as tipo
        assert not [m for m in ("kgen", "transformers", "llama_cpp") if m in sys.modules], "imported too early"
        print("FORMAT", tipo.format_only("izuna (blue archive), 1girl").prompt.replace(chr(10), "|"))
        assert not [m for m in ("transformers", "llama_cpp") if m in sys.modules], "formatting needs no model code"
        from hdm_core.tipo import kgen_api
        kgen = kgen_api.load_kgen()
        module, why = kgen_api.llama_cpp()
        assert module is None and sys.modules["llama_cpp"] is None
        print("WHY", why)
        """,
        extra_path=tmp_path / "site",
    )
    assert proc.returncode == 0, proc.stderr
    assert "WHY it is installed but failed to load: OSError: libllama.so: cannot open shared object file" in proc.stdout
    assert "FORMAT 1girl,|izuna \\(blue archive\\)" in proc.stdout
    assert "Llama-cpp-python cannot be imported" not in proc.stdout + proc.stderr
