"""ComfyUI nodes for HDM: thin adapters over ``hdm_core``."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

# TIPO prompt expansion and HDM prompt layout
from .tipo import NODE_CLASS_MAPPINGS as _TIPO_NODES, NODE_DISPLAY_NAME_MAPPINGS as _TIPO_NAMES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_TIPO_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_TIPO_NAMES)
