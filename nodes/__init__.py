"""ComfyUI nodes for HDM: thin adapters over ``hdm_core``."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
