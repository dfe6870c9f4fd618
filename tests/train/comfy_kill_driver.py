"""A ComfyUI process that trains with HDM Train LyCORIS (save_every=1), for the kill test.

``python comfy_kill_driver.py COMFYUI_PATH LORAS_DIR DATASET_DIR``: starts the test
harness's ComfyUI (tests/comfy_harness.py: CPU mode, this pack loaded by ComfyUI's own
loader, tiny models), makes LORAS_DIR the default models/loras folder and runs a prompt
HDM Checkpoint Loader → HDM Train LyCORIS. The test sets ``HDM_TEST_SAVE_PAUSE`` so a
periodic save blocks half-way, then SIGKILLs this process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(comfyui: str, loras: str, dataset: str) -> int:
    sys.path.insert(0, comfyui)
    spec = importlib.util.spec_from_file_location("hdm_comfy_harness", REPO / "tests" / "comfy_harness.py")
    H = importlib.util.module_from_spec(spec)
    sys.modules["hdm_comfy_harness"] = H
    spec.loader.exec_module(H)
    cui = H.get_comfy(Path(comfyui))
    cui.folder_paths.add_model_folder_path("loras", loras, is_default=True)
    prompt = H.train_only_prompt(dataset_folder=dataset, save_name="killed", steps=4, save_every=1, learning_rate=0.01)
    result = cui.run(prompt)
    print("finished", result.ok, result.error(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
