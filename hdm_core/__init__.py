"""hdm_core: HDM (Home-made Diffusion Model) in plain PyTorch.

Pure PyTorch, no ComfyUI imports; the ComfyUI nodes, the headless generator and the
trainer all build on it. Public API::

    from hdm_core import load_xut, XUT, XUTConfig
    model = load_xut("hdm-xut-340M-1024px-note.safetensors", dtype=torch.float32)
    v = model(x, t, ctx, pos_map=None, addon_info=None, tread_rate=None)
"""

from .checkpoint import CheckpointError, load_xut, read_state_dict, save_safetensors
from .config import HDM_XUT_SMALL, TreadConfig, XUTConfig
from .positions import axial_grid, camera_pos_map, crop_pos_map, downsample_pos_map
from .xut import XUT

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "HDM_XUT_SMALL",
    "TreadConfig",
    "XUT",
    "XUTConfig",
    "axial_grid",
    "camera_pos_map",
    "crop_pos_map",
    "downsample_pos_map",
    "load_xut",
    "read_state_dict",
    "save_safetensors",
]
