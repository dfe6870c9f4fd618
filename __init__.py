"""ComfyUI entry point of the HDM node pack.

ComfyUI imports this folder as a package by file path, so everything below is imported
relatively. The nodes use ComfyUI's V3 schema: the pack exports ``comfy_entrypoint`` (an
async function returning a ``ComfyExtension``) and deliberately no ``NODE_CLASS_MAPPINGS``,
because ComfyUI's loader takes the V1 mappings first when a module has both.
"""

from .nodes import comfy_entrypoint

#: The frontend extension in web/ (ComfyUI reads this for V3 packs too, before comfy_entrypoint):
#: it opens UI workflows saved with HDM Train LyCORIS's flat inputs on hosts with DynamicCombo.
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint"]
