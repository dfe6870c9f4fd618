"""Build what ``benchmarks/comfy_gpu.py`` needs on a GPU machine that cannot install anything.

    python scripts/build_gpu_bundle.py                 # → .gpu_bundle/ (git-ignored), prints its size
    python scripts/build_gpu_bundle.py --verify        # + run the CPU smoke on ONLY the bundle (see below)

The GPU machine (see benchmarks/README.md, "ComfyUI on a GPU") has Python 3.12, PyTorch and the
usual scientific stack, but not ComfyUI or the packages ComfyUI v0.33 adds, and a call may carry
64 MiB in all (the repository included). The bundle is:

* ``.gpu_bundle/comfyui.tar.xz`` — ComfyUI's source as the in-process run imports it (12 MiB
  unpacked, 2-3 MiB packed: the device command unpacks it to /tmp), trimmed: no git
  history, tests, docs, frontend/blueprint/example assets, API nodes (the run starts without
  them) or byte-code, and of ``comfy/``'s tokenizer data only ``qwen25_tokenizer`` (the one HDM's
  text encoder uses); every ``.py`` file stays, so no import can miss.
* ``.gpu_bundle/whl/`` — wheels (CPython 3.12, manylinux x86-64) of the packages ComfyUI v0.33
  imports that the GPU image lacks, at the versions installed here, plus lycoris-lora for the
  training node. ``comfy_kitchen`` is repacked without its compiled CUDA (176 MB) and HIP
  (59 MB) backends — its wheel alone is 58 MB — so it runs on its eager and Triton backends (it
  falls back by itself when ``_C`` is missing); everything else is shipped as released.
* ``.gpu_bundle/reference/src/xut`` — with ``--reference``: the reference implementation's package.
* ``.gpu_bundle/MANIFEST.json`` — what was shipped, repacked and left out, and the sizes.

``--verify`` builds the same wheels for *this* machine's Python, installs them with pip
``--target`` into a temp folder, makes a fresh virtual environment that sees only the packages
the GPU image has (linked from this environment) and runs ``benchmarks/comfy_gpu.py --smoke``
there against the trimmed tree: the closest a CPU gets to the GPU machine.
"""

from __future__ import annotations

import argparse
import hashlib
import base64
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_bundle"
CARRY_LIMIT = 64 * 1024**2

#: Python packages of the GPU machine's image ('cuda'), as its KINDS.md listed them on 2026-11-17.
GPU_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()

#: What the run needs that the image lacks: ComfyUI v0.33's requirements.txt (essential part) and
#: their dependencies, plus lycoris-lora (HDM Train LyCORIS). Versions: those installed here.
WHEELS = ["comfy-kitchen", "comfy-aimdo", "av", "torchsde", "trampoline", "alembic", "mako", "sqlalchemy",
          "simpleeval", "blake3", "toml", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "lycoris-lora"]  # fmt: skip
#: pydantic is "non-essential" in requirements.txt, but server.py imports the asset routes, which need it.
#: Non-essential ComfyUI requirements left out: only other node families import them (ComfyUI logs
#: those nodes as failed to import and goes on), none of the nodes this run uses.
LEFT_OUT = {
    "kornia": "image-processing nodes (comfy_extras), not used by HDM",
    "spandrel": "upscale-model nodes, not used by HDM",
    "pydantic-settings": "comfy_config (pyproject parsing of registry nodes), not reached by this run",
    "PyOpenGL / comfy-angle": "GL-based nodes, not used by HDM",
    "comfyui-frontend-package / workflow-templates / embedded-docs": "the web UI; the run starts no web server",
}
#: Trimmed from the top of the ComfyUI tree (folders whole), and anywhere in it.
TRIM_TOP = {".git", ".github", ".ci", "tests", "tests-unit", "script_examples", "blueprints", "comfy_api_nodes",
            "custom_nodes", "models", "input", "output", "temp", "user", "web"}  # fmt: skip
TRIM_ANYWHERE = {"__pycache__", ".pytest_cache", ".git"}
TRIM_SUFFIXES = {".pyc", ".md", ".png", ".jpg", ".webp", ".gif"}
KEEP_TOKENIZERS = {"qwen25_tokenizer"}
KITCHEN_DROP = re.compile(r"^comfy_kitchen/backends/(cuda|hip)/_C\..*\.(so|pyd)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


# ----------------------------------------------------------------------------- ComfyUI source
def copy_comfyui(src: Path, dst: Path) -> dict:
    """Copy ComfyUI's tree without what the in-process run never reads; returns what was dropped."""
    dropped: dict[str, int] = {}

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        out = set()
        for n in names:
            p = here / n
            rel = p.relative_to(src).as_posix()
            if n in TRIM_ANYWHERE or (here == src and n in TRIM_TOP) or (p.is_file() and p.suffix.lower() in TRIM_SUFFIXES and rel != "LICENSE"):
                out.add(n)
            elif p.is_dir() and n.endswith("tokenizer") and n not in KEEP_TOKENIZERS and not any(p.rglob("*.py")):  # data only
                out.add(n)
            elif p.is_file() and n.endswith((".yaml", ".json")) and rel.startswith(("openapi", "comfy_api_nodes")):
                out.add(n)
        for n in out:
            dropped[(here / n).relative_to(src).as_posix()] = size_of(here / n)
        return out

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=ignore, symlinks=False)
    return dropped


# ----------------------------------------------------------------------------- wheels
def pip_download(names: list[str], dest: Path, python_version: str, platform_tags: list[str]) -> None:
    pins = [f"{n}=={md.version(n)}" for n in names]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp", "-d", str(dest), *[a for t in platform_tags for a in ("--platform", t)], *pins]  # fmt: skip
    subprocess.run(cmd, check=True)


def repack_kitchen(wheel: Path) -> dict:
    """Rewrite comfy_kitchen's wheel without its compiled CUDA/HIP backends (RECORD updated)."""
    tmp = wheel.with_suffix(".tmp")
    dropped = {}
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        kept_records = []
        for info in zin.infolist():
            if KITCHEN_DROP.match(info.filename):
                dropped[info.filename] = info.file_size
                continue
            if info.filename == record_name:
                continue
            data = zin.read(info)
            zout.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            kept_records.append(f"{info.filename},sha256={digest},{len(data)}")
        kept_records.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(kept_records) + "\n")
    tmp.replace(wheel)
    return dropped


def build_wheels(dest: Path, python_version: str) -> dict:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tags = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
            "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]  # fmt: skip
    pip_download(WHEELS, dest, python_version, tags)
    (kitchen,) = dest.glob("comfy_kitchen-*.whl")
    before = kitchen.stat().st_size
    dropped = repack_kitchen(kitchen)
    return {"kitchen_dropped": dropped, "kitchen_wheel_before": before, "kitchen_wheel_after": kitchen.stat().st_size,
            "wheels": {w.name: w.stat().st_size for w in sorted(dest.glob("*.whl"))}}  # fmt: skip


# ----------------------------------------------------------------------------- sizes
def travelling_size() -> int:
    """Bytes of what a device call sends: tracked and untracked-not-ignored files of this checkout."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    return sum((REPO / f).stat().st_size for f in out.stdout.decode().split("\0") if f and (REPO / f).is_file())


def copy_reference(src: Path, dst: Path) -> int:
    """The reference implementation's Python package (``src/xut``), for the speed table's reference row."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "src" / "xut", dst / "src" / "xut", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return size_of(dst)


def build(comfyui: Path, out: Path, python_version: str, reference: Path | None = None) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    version_file = comfyui / "comfyui_version.py"
    version = version_file.read_text().split("=")[-1].strip().strip("\"'") if version_file.is_file() else "?"
    with tempfile.TemporaryDirectory() as tmp:
        dropped = copy_comfyui(comfyui, Path(tmp) / "comfyui")
        unpacked = size_of(Path(tmp) / "comfyui")
        if (out / "comfyui").exists():  # an older, unpacked bundle
            shutil.rmtree(out / "comfyui")
        with tarfile.open(out / "comfyui.tar.xz.tmp", "w:xz") as tar:
            tar.add(Path(tmp) / "comfyui", arcname="comfyui")
        (out / "comfyui.tar.xz.tmp").replace(out / "comfyui.tar.xz")
    wheels = build_wheels(out / "whl", python_version)
    comfy_size, whl_size = size_of(out / "comfyui.tar.xz"), size_of(out / "whl")
    ref_size = copy_reference(reference, out / "reference") if reference else 0
    if not reference and (out / "reference").exists():
        shutil.rmtree(out / "reference")
    repo_size = travelling_size()
    manifest = {
        "comfyui_version": version,
        "python_version": python_version,
        "comfyui_bytes": comfy_size,
        "comfyui_unpacked_bytes": unpacked,
        "comfyui_dropped_bytes": sum(dropped.values()),
        "comfyui_dropped": sorted(k for k, v in dropped.items() if v > 50_000),
        "wheels": wheels["wheels"],
        "wheels_bytes": whl_size,
        "comfy_kitchen_left_out": {k: v for k, v in wheels["kitchen_dropped"].items()},
        "left_out_packages": LEFT_OUT,
        "repo_bytes": repo_size,
    }
    manifest["reference_bytes"] = ref_size
    total = repo_size + comfy_size + whl_size + ref_size + 4096
    manifest["carry_total_bytes"] = total
    shipped = ", ".join(sorted(re.split(r"-\d", w)[0] for w in wheels["wheels"] if not w.startswith("comfy_kitchen")))
    manifest["summary"] = (
        f"ComfyUI {version} source trimmed to {mib(unpacked)} (every .py kept; tokenizers other than qwen25, tests, docs, "
        f"API nodes and assets left out); wheels as released: {shipped}; comfy_kitchen repacked without its compiled CUDA "
        f"and HIP backends (eager/triton only); left out: {', '.join(LEFT_OUT)}"
    )
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    print(f"ComfyUI {version} source (trimmed): {mib(unpacked)}, packed {mib(comfy_size)} (left out {mib(sum(dropped.values()))})")
    for name, n in wheels["wheels"].items():
        print(f"  {name}: {mib(n)}")
    print(f"comfy_kitchen wheel {mib(wheels['kitchen_wheel_before'])} → {mib(wheels['kitchen_wheel_after'])} "
          f"(left out: {', '.join(wheels['kitchen_dropped'])})")  # fmt: skip
    print(f"wheels: {mib(whl_size)}; repository files that travel: {mib(repo_size)}")
    print(f"TOTAL a device call carries: {mib(total)} of {mib(CARRY_LIMIT)} ({time.perf_counter() - t0:.0f} s)")
    if total > CARRY_LIMIT:
        print("WARNING: over the 64 MiB a call may carry", file=sys.stderr)
    return manifest


# ----------------------------------------------------------------------------- verification
def image_closure() -> set[str]:
    """The image's packages plus what *this* environment's versions of them require (e.g. a newer
    huggingface-hub's own dependencies): the image has each of its packages' needs installed."""
    from packaging.requirements import Requirement

    dists = {norm(d.metadata["Name"]): d for d in md.distributions()}
    todo = [norm(n) for n in GPU_IMAGE_PACKAGES]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in (dists[name].requires or []) if name in dists else []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(norm(r.name))
    extra = sorted(seen - {norm(n) for n in GPU_IMAGE_PACKAGES} - set(map(norm, WHEELS)))
    if extra:
        print(f"linked as dependencies of the image's packages (this environment's versions): {', '.join(extra)}")
    return seen - set(map(norm, WHEELS))


def gpu_like_venv(root: Path) -> Path:
    """A fresh venv whose site-packages links only the packages the GPU image has, from this environment."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    wanted = image_closure()
    linked = set()
    for dist in md.distributions():
        if norm(dist.metadata["Name"]) not in wanted or not dist.files:
            continue
        base = Path(dist.locate_file(""))
        for f in dist.files:
            top = f.parts[0]
            if top in ("..", "bin") or top in linked:
                continue
            src = base / top
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
                linked.add(top)
        for pth in base.glob("*.pth"):  # e.g. distutils-precedence; harmless, keeps behaviour close
            if norm(pth.stem.split("-")[0]) in wanted and not (site / pth.name).exists():
                (site / pth.name).symlink_to(pth)
    return venv / "bin" / "python"


def verify(comfyui_tar: Path) -> int:
    """Smoke-run the benchmark on only the trimmed tree + the bundle's packages (built for this Python)."""
    root = Path(tempfile.mkdtemp(prefix="hdm-gpu-bundle-verify-"))
    try:
        with tarfile.open(comfyui_tar) as tar:
            tar.extractall(root, filter="data")
        comfyui_bundle = root / "comfyui"
        local = f"{sys.version_info.major}.{sys.version_info.minor}"
        print(f"\n--verify: wheels for Python {local}, a venv with only the GPU image's packages, the trimmed ComfyUI")
        build_wheels(root / "whl", local)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                        str(root / "site"), *map(str, sorted((root / "whl").glob("*.whl")))], check=True)  # fmt: skip
        python = gpu_like_venv(root)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "COMFYUI_PATH")}
        env.update(PYTHONPATH=str(root / "site"), PYTHONUNBUFFERED="1")
        cmd = [str(python), str(REPO / "benchmarks" / "comfy_gpu.py"), "--smoke", "--comfyui", str(comfyui_bundle), "--out", str(root / "out")]
        print("running:", " ".join(cmd))
        rc = subprocess.run(cmd, env=env, cwd=str(root)).returncode
        res = root / "out" / "results.json"
        if rc == 0 and res.is_file():
            errors = json.loads(res.read_text())["summary"]["errors"]
            print("verify:", "OK" if not errors else f"ERRORS {errors}")
            return 0 if not errors else 1
        log = root / "out" / "logs.txt"
        if log.is_file():
            print(log.read_text()[-6000:])
        return rc or 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(Path.home() / "ComfyUI")), help="ComfyUI v0.33 checkout")
    ap.add_argument("--out", type=Path, default=BUNDLE)
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--reference", type=Path, default=None, help="checkout of KohakuBlueleaf/HDM: its src/xut goes in too")
    ap.add_argument("--verify", action="store_true", help="then smoke-run the benchmark on only the bundle (CPU)")
    args = ap.parse_args()
    comfyui = Path(args.comfyui).expanduser()
    if not (comfyui / "comfy" / "model_management.py").is_file():
        print(f"no ComfyUI checkout at {comfyui} (pass --comfyui)", file=sys.stderr)
        return 2
    build(comfyui, args.out, args.python_version, args.reference.expanduser() if args.reference else None)
    return verify(args.out / "comfyui.tar.xz") if args.verify else 0


if __name__ == "__main__":
    sys.exit(main())
