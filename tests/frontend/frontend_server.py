"""A real ComfyUI server with this pack, for the frontend: ``main.py --cpu`` in a temporary base directory.

The base directory holds ``custom_nodes/hdm-nodes`` (a link to this checkout), placeholder model
files under the names the shipped workflows use (empty files: the frontend only lists names, and
nothing is run), ``input/example.png`` and an in-memory database, so nothing is written into the
ComfyUI checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "hdm-nodes"
PLACEHOLDERS = (
    "checkpoints/hdm-xut-340M-1024px-note.safetensors",
    "text_encoders/qwen3-0.6b.safetensors",
    "loras/hdm-lora.safetensors",
    "tipo/TIPO-200M-ft2/config.json",
)


def comfyui_path() -> Path | None:
    """The ComfyUI checkout the tests use: ``COMFYUI_PATH``, the pack's grandparent folder, or
    ~/ComfyUI, the first that holds ``comfy/model_management.py`` (tests/conftest.py asks here)."""
    for c in (os.environ.get("COMFYUI_PATH"), str(REPO.parent.parent), str(Path.home() / "ComfyUI")):
        if c and (Path(c).expanduser() / "comfy" / "model_management.py").is_file():
            return Path(c).expanduser().resolve()
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FrontendServer:
    """``main.py --cpu`` on a free local port in a temporary base directory (this pack linked in).

    ``populate`` fills the base directory before the start (here: placeholder model files);
    subclasses that run prompts write real models there instead.
    """

    EXTRA_ARGS: tuple[str, ...] = ()

    def __init__(self, comfyui: Path) -> None:
        self.comfyui = comfyui
        self.base = Path(tempfile.mkdtemp(prefix="hdm-frontend-server-"))
        (self.base / "custom_nodes").mkdir()
        os.symlink(REPO, self.base / "custom_nodes" / PACK_DIR_NAME)
        self.populate()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.base / "server.log", "w")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
             "--disable-auto-launch", "--disable-api-nodes", *self.EXTRA_ARGS],
            cwd=str(comfyui), stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def populate(self) -> None:
        """Empty model files under the names the shipped workflows use, and ComfyUI's example picture."""
        for rel in PLACEHOLDERS:
            p = self.base / "models" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}" if p.suffix == ".json" else "")
        (self.base / "input").mkdir()
        example = self.comfyui / "input" / "example.png"
        if example.is_file():
            shutil.copy(example, self.base / "input" / "example.png")

    def logtext(self) -> str:
        self.log.flush()
        return (self.base / "server.log").read_text()[-4000:]

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.logtext()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=10):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise TimeoutError(f"ComfyUI did not start in {timeout}s:\n{self.logtext()}")

    def wait_ready_or_skip(self) -> None:
        """:meth:`wait_ready`, or skip the calling test where this ComfyUI's server cannot start at all (:func:`cannot_serve`)."""
        try:
            self.wait_ready()
        except RuntimeError as exc:
            if cannot_serve(exc):
                import pytest

                pytest.skip(cannot_serve(exc))
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


def cannot_serve(exc: Exception) -> str | None:
    """Why this ComfyUI's server cannot start at all, whatever the pack (a reason to skip), or None."""
    text = str(exc)
    if "comfyui_workflow_templates" in text and "does not exist" in text:
        # ComfyUI 0.3.x's server against the newer split template packages v0.33's requirements install
        return "this ComfyUI's server cannot start with the installed comfyui_workflow_templates (install the version its requirements.txt pins)"
    return None


@contextlib.contextmanager
def start_server(comfyui: Path | None = None):
    comfyui = comfyui or comfyui_path()
    if comfyui is None:
        raise RuntimeError("no ComfyUI checkout found: set COMFYUI_PATH")
    srv = FrontendServer(comfyui)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
