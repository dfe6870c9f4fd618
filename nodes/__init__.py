"""ComfyUI nodes for HDM: thin adapters over ``hdm_core`` on ComfyUI's V3 node schema (category "HDM").

Node ids, input names, widget order and output slots are those of the V1 pack, so workflows
saved with it open and run unchanged (tests/test_comfy_legacy_workflows.py).
"""

from .conditioning import HDMCamera, HDMTextEncode, HDMTreadGuidance
from .loaders import HDMCheckpointLoader, HDMTextEncoderLoader
from .sampler import HDMSampler
from .tipo import HDMPromptFormat, HDMTipoPrompt
from .train import HDMTrainLyCORIS
from .v3 import ComfyExtension, io
from .vae import HDMVAEDecode

#: Every node of the pack, in the order of the "HDM" menu.
NODE_LIST: list[type[io.ComfyNode]] = [
    HDMCheckpointLoader,
    HDMTextEncoderLoader,
    HDMTextEncode,
    HDMCamera,
    HDMTreadGuidance,
    HDMSampler,
    HDMVAEDecode,
    HDMTrainLyCORIS,
    HDMTipoPrompt,
    HDMPromptFormat,
]


class HDMExtension(ComfyExtension):
    """The pack as a V3 extension: ComfyUI registers each node under its schema's ``node_id``."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> HDMExtension:
    return HDMExtension()
