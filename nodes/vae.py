"""HDM VAE Decode: EQ-SDXL-VAE decoding, whole or in tiles.

In ComfyUI a LATENT leaves the sampler already denormalised into the VAE's own space (the
model's latent format, ``HDMLatentFormat.process_out``, applies ``z·std + mean``), so this node
decodes it as is — the same result as the stock VAE Decode — and adds a tiled option for
large images plus a clear error for latents that are not EQ-SDXL-VAE latents.
"""

from __future__ import annotations

from ..hdm_core.latents import LATENT_CHANNELS
from .v3 import io, schema


class HDMVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMVAEDecode",
            display_name="HDM VAE Decode",
            description="Decodes an HDM latent to an image with the EQ-SDXL-VAE, optionally in tiles.",
            search_aliases=["eq-sdxl-vae decode", "hdm decode", "tiled vae decode"],
            inputs=[
                io.Latent.Input("samples", tooltip="The latent from HDM Sampler or KSampler."),
                io.Vae.Input("vae", tooltip="The EQ-SDXL-VAE (from HDM Checkpoint Loader or Load VAE)."),
                io.Boolean.Input("tiled", default=False, tooltip="Decode in overlapping tiles: much less memory for large images, nearly identical output."),
                io.Int.Input("tile_size", default=1024, min=256, max=4096, step=64, tooltip="Tile size in pixels when tiled is on."),
                io.Int.Input("overlap", default=128, min=0, max=1024, step=32, tooltip="Overlap between tiles in pixels when tiled is on (at most a quarter of tile_size)."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image.")],
        )

    @classmethod
    def execute(cls, samples, vae, tiled=False, tile_size=1024, overlap=128) -> io.NodeOutput:
        latent = samples["samples"]
        if getattr(latent, "is_nested", False):
            latent = latent.unbind()[0]
        if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
            raise ValueError(
                f"HDM VAE Decode: expected an EQ-SDXL-VAE latent with {LATENT_CHANNELS} channels, got shape {list(latent.shape)}"
            )
        if tiled:
            compression = vae.spacial_compression_decode()
            overlap = min(overlap, tile_size // 4)
            images = vae.decode_tiled(latent, tile_x=tile_size // compression, tile_y=tile_size // compression, overlap=overlap // compression)
        else:
            images = vae.decode(latent)
        if images.ndim == 5:
            images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
        return io.NodeOutput(images)
