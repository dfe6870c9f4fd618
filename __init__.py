"""ComfyUI entry point of the HDM node pack.

ComfyUI imports this folder as a package by file path, so everything below is imported
relatively. The nodes use the classic ``NODE_CLASS_MAPPINGS`` API, which every ComfyUI
release from 0.3.x on understands.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
