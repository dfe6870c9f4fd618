"""Conditioning nodes: HDM Text Encode (bracket modes), HDM Camera, HDM TREAD Guidance.

Camera and TREAD gamma travel as keys of ComfyUI's conditioning dicts
(``model.CAMERA_KEY``/``model.TREAD_KEY``) and reach the model as ``CONDConstant``s, so they
work with the stock KSampler, SamplerCustom(Advanced) and HDM Sampler alike. The nodes copy
each conditioning (``node_helpers.conditioning_set_values``), never mutating upstream outputs.
"""

from __future__ import annotations

import node_helpers

from ..hdm_core.brackets import escape_danbooru
from .model import CAMERA_KEY, TREAD_KEY
from .v3 import check_options, io, schema

BRACKET_MODES = ["danbooru", "comfy"]


def prepare_prompt(text: str, bracket_mode: str) -> str:
    """The text ComfyUI's weight parser should see for ``bracket_mode``."""
    if bracket_mode == "danbooru":
        return escape_danbooru(text)
    if bracket_mode == "comfy":
        return text
    raise ValueError(f"unknown bracket_mode '{bracket_mode}'; choose one of: {', '.join(BRACKET_MODES)}")


def encode_prompt(clip, text: str, bracket_mode: str = "danbooru") -> list:
    """HDM Text Encode's conditioning for ``text`` (also what the training node encodes captions with)."""
    if clip is None:
        raise RuntimeError("HDM Text Encode: the clip input is empty; connect the CLIP output of HDM Checkpoint Loader or HDM Text Encoder Loader.")
    tokens = clip.tokenize(prepare_prompt(text, bracket_mode))
    return clip.encode_from_tokens_scheduled(tokens)


class HDMTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMTextEncode",
            display_name="HDM Text Encode (Qwen3)",
            description="Encodes a prompt with Qwen3-0.6B for HDM, with danbooru-friendly bracket handling.",
            search_aliases=["hdm prompt", "qwen", "qwen3 text encode", "anime prompt", "clip text encode hdm"],
            inputs=[
                io.Clip.Input("clip", tooltip="HDM's Qwen3-0.6B text encoder, from HDM Checkpoint Loader or HDM Text Encoder Loader."),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    tooltip="The prompt: danbooru tags and/or natural language. An empty prompt gives zero text tokens (HDM's unconditional input).",
                ),
                io.Combo.Input(
                    "bracket_mode",
                    options=BRACKET_MODES,
                    default="danbooru",
                    tooltip="danbooru: brackets in tags such as 'izuna (blue archive)' are literal text, while explicit weights like "
                    "'(smile:1.2)' still weight. comfy: ComfyUI's stock parsing, where '(x)' means x1.1 and literal brackets must be written \\( \\).",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="The encoded prompt for HDM Sampler or KSampler.")],
        )

    @classmethod
    def validate_inputs(cls, bracket_mode=None) -> bool | str:
        return check_options(cls, bracket_mode=bracket_mode)

    @classmethod
    def execute(cls, clip, text, bracket_mode="danbooru") -> io.NodeOutput:
        return io.NodeOutput(encode_prompt(clip, text, bracket_mode))


class HDMCamera(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMCamera",
            display_name="HDM Camera",
            description="HDM's camera control: shifts and zooms the position grid the model renders on (0, 0, 1 = the default view).",
            search_aliases=["hdm zoom", "hdm pan", "camera control", "anime camera"],
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning to place the camera on."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning; it gets the same camera so both CFG branches see the same framing."),
                io.Float.Input("x_shift", default=0.0, min=-2.0, max=2.0, step=0.01, tooltip="Moves the view horizontally (positive = right), in HDM position units: the image spans -1 to 1 along its long side."),
                io.Float.Input("y_shift", default=0.0, min=-2.0, max=2.0, step=0.01, tooltip="Moves the view vertically (positive = down), in HDM position units: the image spans -1 to 1 along its long side."),
                io.Float.Input("zoom", default=1.0, min=0.25, max=4.0, step=0.01, tooltip="Zoom of the view: above 1 zooms in (subject larger), below 1 zooms out."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive", tooltip="Positive conditioning with the camera set."),
                io.Conditioning.Output("negative_out", display_name="negative", tooltip="Negative conditioning with the camera set."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, x_shift=0.0, y_shift=0.0, zoom=1.0) -> io.NodeOutput:
        if zoom <= 0:
            raise ValueError(f"HDM Camera: zoom must be > 0, got {zoom}")
        camera = (float(x_shift), float(y_shift), float(zoom))
        return io.NodeOutput(
            node_helpers.conditioning_set_values(positive, {CAMERA_KEY: camera}),
            node_helpers.conditioning_set_values(negative, {CAMERA_KEY: camera}),
        )


class HDMTreadGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="HDMTreadGuidance",
            display_name="HDM TREAD Guidance",
            description="TREAD guidance: routes a random fraction of image tokens around the backbone, separately for the positive and negative pass.",
            search_aliases=["tread", "hdm guidance", "token routing"],
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Float.Input("positive_gamma", default=0.0, min=0.0, max=0.95, step=0.01, tooltip="Fraction of image tokens that skip the model's backbone in the positive pass (0 = off, the reference setting)."),
                io.Float.Input("negative_gamma", default=0.5, min=0.0, max=0.95, step=0.01, tooltip="Fraction of image tokens that skip the backbone in the negative pass. The reference uses 0.5: a weaker negative sharpens CFG (TREAD guidance)."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive", tooltip="Positive conditioning with its TREAD gamma."),
                io.Conditioning.Output("negative_out", display_name="negative", tooltip="Negative conditioning with its TREAD gamma."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, positive_gamma=0.0, negative_gamma=0.5) -> io.NodeOutput:
        for name, gamma in (("positive_gamma", positive_gamma), ("negative_gamma", negative_gamma)):
            if not 0.0 <= gamma < 1.0:
                raise ValueError(f"HDM TREAD Guidance: {name} must be in [0, 1), got {gamma}")
        return io.NodeOutput(
            node_helpers.conditioning_set_values(positive, {TREAD_KEY: float(positive_gamma)}),
            node_helpers.conditioning_set_values(negative, {TREAD_KEY: float(negative_gamma)}),
        )
