"""Shared test setup.

* ``hdm_core`` and ``trainer`` are imported from *this* checkout (even when another copy is
  installed), without leaving the repository root on ``sys.path``: the pack's ``nodes/``
  package must never shadow ComfyUI's top-level ``nodes`` module.
* ComfyUI is found via ``COMFYUI_PATH``, else the pack's grandparent folder (packs live in
  ``ComfyUI/custom_nodes/<pack>``), else ``~/ComfyUI``. Without one, ComfyUI tests skip with
  one loud line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "xut_reference"


def _import_from_checkout(*names: str) -> None:
    root = str(REPO)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    for name in names:
        mod = sys.modules.get(name)
        if mod is not None and Path(mod.__file__).resolve().parent.parent != REPO:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
    sys.path.insert(0, root)
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        sys.path.remove(root)


_import_from_checkout("hdm_core", "trainer")


def _load_helper(name: str, path: Path):
    """Import a helper module of the tests by file path, once (``tests/`` is not on ``sys.path``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# Test modules use these as ``import hdm_comfy_harness as H`` / ``import standins``: conftest is
# imported before them (standins: tiny models and stand-in encoders of the training tests).
_load_helper("hdm_comfy_harness", Path(__file__).with_name("comfy_harness.py"))
_load_helper("standins", Path(__file__).parent / "train" / "standins.py")
_load_helper("frontend_server", Path(__file__).parent / "frontend" / "frontend_server.py")  # a real ComfyUI server
_load_helper("probe_files", Path(__file__).with_name("probe_files.py"))  # safetensors files with a chosen first byte


def find_fixtures() -> Path | None:
    """The reference oracle: ``HDM_FIXTURES``, the copy in ``tests/fixtures``, or ``../shared``."""
    env = os.environ.get("HDM_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates += [FIXTURES, REPO.parent / "shared" / "fixtures" / "xut_reference"]
    for c in candidates:
        if (c / "tiny_cases.safetensors").is_file():
            return c
    return None


def find_comfyui() -> Path | None:
    """ComfyUI checkout per DEVELOPERS.md: ``COMFYUI_PATH``, grandparent folder, ``~/ComfyUI``
    (one rule, in tests/frontend/frontend_server.py, which its scripts use too)."""
    return sys.modules["frontend_server"].comfyui_path()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = find_fixtures()
    if path is None:
        pytest.skip("reference fixtures not found (tests/fixtures/xut_reference, or set HDM_FIXTURES)")
    return path


_comfy_skip_reported = False


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """Path of a ComfyUI checkout, set up for CPU-only in-process use."""
    global _comfy_skip_reported
    path = find_comfyui()
    if path is None:
        if not _comfy_skip_reported:
            _comfy_skip_reported = True
            warnings.warn("NO COMFYUI FOUND (COMFYUI_PATH / ../../ / ~/ComfyUI): every ComfyUI test is SKIPPED")
        pytest.skip("ComfyUI not found: set COMFYUI_PATH to run the ComfyUI tests")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return path


@pytest.fixture(scope="module")
def cui(comfyui_path):
    """The harness's in-process ComfyUI with the tiny HDM files in its model folders."""
    return sys.modules["hdm_comfy_harness"].get_comfy(comfyui_path)


@pytest.fixture
def v3_dataset(cui):
    """The two-image folder ``train_prompt`` names, in ComfyUI's input folder (the node checks it exists)."""
    return cui.write_dataset("v3_dataset")


def pytest_report_header(config) -> list[str]:
    comfy = find_comfyui()
    lines = [f"hdm_core from: {Path(sys.modules['hdm_core'].__file__).parent}"]
    lines.append(f"ComfyUI: {comfy}" if comfy else "ComfyUI: NOT FOUND - ComfyUI tests will be skipped")
    fx = find_fixtures()
    lines.append(f"reference fixtures: {fx}" if fx else "reference fixtures: NOT FOUND - oracle tests will be skipped")
    return lines
