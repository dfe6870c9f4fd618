#!/usr/bin/env bash
# From a fresh clone to an image in one command (Linux/macOS, Python >= 3.10):
#
#   bash scripts/generate.sh --prompt "1girl, solo, cherry blossoms" --out out.png --download
#
# 1. creates a virtualenv in .venv (or uses $HDM_VENV),
# 2. installs PyTorch 2.14.1 unless the venv already has torch (set HDM_TORCH_INDEX, e.g.
#    https://download.pytorch.org/whl/cpu, to pick a wheel index such as the small CPU-only build),
# 3. installs this package with its dependencies (transformers, tokenizers, huggingface_hub …),
# 4. runs `python -m hdm_core generate` with the arguments given, in the current folder.
#
# Weights are looked for in ./models, a ComfyUI models folder (--comfyui / COMFYUI_PATH) and the
# paths given (--ckpt, --te); --download fetches the released files into ./models first.
# Without weights and without --download it stops and says which files to get and where to put them.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HDM_VENV:-$REPO/.venv}
PY=${PYTHON:-python3}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "installing torch 2.14.1 (once)" >&2
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q ${HDM_TORCH_INDEX:+--index-url "$HDM_TORCH_INDEX"} torch==2.14.1
fi
# (Re)install the package when it is missing or installed from another checkout.
if ! python - "$REPO" >/dev/null 2>&1 <<'PYCHECK'
import pathlib, sys
import huggingface_hub, PIL, safetensors, tokenizers, tqdm, transformers  # noqa: F401
import hdm_core
sys.exit(pathlib.Path(hdm_core.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())
PYCHECK
then
  echo "installing hdm_core and its dependencies (once)" >&2
  python -m pip install -q -e "$REPO[download]"
fi

exec python -m hdm_core generate "$@"
