"""ComfyUI nodes for HDM: thin adapters over ``hdm_core`` (classic V1 node API, category "HDM")."""

from .conditioning import HDMCamera, HDMTextEncode, HDMTreadGuidance
from .loaders import HDMCheckpointLoader, HDMTextEncoderLoader
from .sampler import HDMSampler
from .train import HDMTrainLyCORIS
from .tipo import NODE_CLASS_MAPPINGS as _TIPO_NODES, NODE_DISPLAY_NAME_MAPPINGS as _TIPO_NAMES
from .vae import HDMVAEDecode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "HDMCheckpointLoader": HDMCheckpointLoader,
    "HDMTextEncoderLoader": HDMTextEncoderLoader,
    "HDMTextEncode": HDMTextEncode,
    "HDMCamera": HDMCamera,
    "HDMTreadGuidance": HDMTreadGuidance,
    "HDMSampler": HDMSampler,
    "HDMVAEDecode": HDMVAEDecode,
    "HDMTrainLyCORIS": HDMTrainLyCORIS,
    **_TIPO_NODES,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "HDMCheckpointLoader": "HDM Checkpoint Loader",
    "HDMTextEncoderLoader": "HDM Text Encoder Loader",
    "HDMTextEncode": "HDM Text Encode (Qwen3)",
    "HDMCamera": "HDM Camera",
    "HDMTreadGuidance": "HDM TREAD Guidance",
    "HDMSampler": "HDM Sampler",
    "HDMVAEDecode": "HDM VAE Decode",
    "HDMTrainLyCORIS": "HDM Train LyCORIS",
    **_TIPO_NAMES,
}
