"""Adapter (LyCORIS) training for HDM's XUT: one engine for the CLI trainer and the ComfyUI node.

Modules, each holding one concept:

* :mod:`.objective` — rectified-flow loss, timestep distributions, per-sample randomness;
* :mod:`.optim` — AdamW, the muP per-parameter lr rule, warm-up + cosine schedule;
* :mod:`.adapters` — target selection, LyCORIS network creation, ComfyUI-loadable files,
  the converter for HDM's own trainer files;
* :mod:`.captions`, :mod:`.buckets`, :mod:`.data`, :mod:`.batching` — datasets;
* :mod:`.state` — exact-resume state files;
* :mod:`.loop` — the engine (:func:`train`).

Importing this package does not import lycoris-lora; creating an adapter does.
"""

from .adapters import (
    ALGORITHMS,
    LYCORIS_VERSION,
    TARGET_PRESETS,
    Adapter,
    AdapterConfig,
    AdapterError,
    convert_hdm_adapter,
    create_adapter,
    load_adapter,
    read_adapter,
    save_adapter,
)
from .buckets import BucketConfig
from .captions import CaptionConfig, process_caption
from .data import Batch, DatasetError, DiskCache, ImageFolderData, LatentData, scan_image_folder
from .loop import StepInfo, TrainCallbacks, TrainConfig, Trainer, TrainingError, TrainResult, train
from .objective import TimestepConfig, flow_matching_loss
from .optim import OptimizerConfig

__all__ = [
    "ALGORITHMS",
    "LYCORIS_VERSION",
    "TARGET_PRESETS",
    "Adapter",
    "AdapterConfig",
    "AdapterError",
    "Batch",
    "BucketConfig",
    "CaptionConfig",
    "DatasetError",
    "DiskCache",
    "ImageFolderData",
    "LatentData",
    "OptimizerConfig",
    "StepInfo",
    "TimestepConfig",
    "TrainCallbacks",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "convert_hdm_adapter",
    "create_adapter",
    "flow_matching_loss",
    "load_adapter",
    "process_caption",
    "read_adapter",
    "save_adapter",
    "scan_image_folder",
    "train",
]
