"""The training node's name and its error type, shared by the node's modules (``train``, ``train_data``)."""

from __future__ import annotations

NODE = "HDM Train LyCORIS"


class TrainNodeError(ValueError):
    """Bad input to the training node; the message names the input and the fix."""


def fail(message: str) -> TrainNodeError:
    """A :class:`TrainNodeError` whose message starts with the node's name (as ComfyUI shows it)."""
    return TrainNodeError(f"{NODE}: {message}")
