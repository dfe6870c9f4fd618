"""The trainer's TOML config: sections, defaults, validation with readable errors.

``trainer/example.toml`` documents every key. Relative paths are resolved against the
config file's folder. Unknown sections or keys are errors (a typo must not silently
train with a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hdm_core.pipeline import check_size
from hdm_core.train import AdapterConfig, BucketConfig, CaptionConfig, OptimizerConfig, TimestepConfig, TrainConfig


class ConfigError(ValueError):
    """A config file problem; the message names the section and key."""


@dataclass(frozen=True)
class ModelSection:
    """The HDM files: checkpoint (XUT, usually + VAE), Qwen3 text encoder, optional separate VAE."""

    checkpoint: str = ""
    text_encoder: str = ""
    vae: str = ""
    dtype: str = "fp32"
    device: str = "auto"


#: ``[encoders] text_padding``: HDM's training encoding, or inference-style contexts.
TEXT_PADDING = ("max_length", "none")


@dataclass(frozen=True)
class EncoderSection:
    """How captions and images become model inputs (built-in HDM encoders unless a factory is named)."""

    text_padding: str = "max_length"
    text_max_length: int = 256
    vae_sample: bool = True
    image: str = ""
    text: str = ""
    image_args: dict[str, Any] = field(default_factory=dict)
    text_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text_padding not in TEXT_PADDING:
            raise ValueError(
                f"text_padding must be \"max_length\" (HDM's training: every caption padded/truncated to "
                f"text_max_length tokens) or \"none\" (inference style: each caption's own tokens), got '{self.text_padding}'"
            )
        if not isinstance(self.vae_sample, bool):
            raise ValueError(f"vae_sample must be true (posterior sample, HDM's recipe) or false (posterior mean), got {self.vae_sample!r}")
        if not isinstance(self.text_max_length, int) or isinstance(self.text_max_length, bool) or self.text_max_length < 1:
            raise ValueError(f"text_max_length must be a whole number >= 1 (HDM's training used 256), got {self.text_max_length}")


@dataclass(frozen=True)
class DatasetSection:
    path: str = ""
    caption_extension: str = ".txt"
    missing_captions: str = "error"
    cache_dir: str = ""
    cache_latents: bool = False
    cache_text: bool = False


@dataclass(frozen=True)
class SampleSection:
    every: int = 0
    prompts: tuple[str, ...] = ()
    negative: str = ""
    steps: int = 20
    cfg: float = 3.0
    width: int = 1024
    height: int = 1024
    seed: int = 0
    sampler: str = "euler"


@dataclass(frozen=True)
class ResumeSection:
    state: str = ""
    init_adapter: str = ""


@dataclass(frozen=True)
class FitConfig:
    model: ModelSection
    encoders: EncoderSection
    dataset: DatasetSection
    buckets: BucketConfig
    captions: CaptionConfig
    adapter: AdapterConfig
    training: TrainConfig
    sample: SampleSection
    resume: ResumeSection
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able (stored in the adapter's metadata)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "source":
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
        return out


def _take(section: str, cls: type, data: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{section}] must be a table of keys, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list) and "tuple" in str(f.type):
            kwargs[f.name] = tuple(kwargs[f.name])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


_SECTIONS = ("model", "encoders", "dataset", "adapter", "training", "output", "sample", "resume")
_OUTPUT_KEYS = ("dir", "name", "save_every", "save_dtype", "save_state")


def parse_config(data: Mapping[str, Any], base: Path | None = None) -> FitConfig:
    """Build a :class:`FitConfig` from parsed TOML; relative paths are taken from ``base``."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) [{'], ['.join(unknown)}]; valid sections: {', '.join(_SECTIONS)}")

    def resolve(p: str) -> str:
        if not p:
            return p
        path = Path(p).expanduser()
        return str(path if path.is_absolute() or base is None else (base / path))

    model_raw = data.get("model", {})
    if isinstance(model_raw, Mapping) and "path" in model_raw:
        raise ConfigError("[model] path is now called checkpoint: write checkpoint = \"...safetensors\"")
    model = _take("model", ModelSection, model_raw)
    if model.dtype not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"[model] dtype must be fp32, bf16 or fp16, got '{model.dtype}'")
    model = dataclasses.replace(
        model, checkpoint=resolve(model.checkpoint), text_encoder=resolve(model.text_encoder), vae=resolve(model.vae)
    )
    encoders = _take("encoders", EncoderSection, data.get("encoders", {}))

    ds_raw = dict(data.get("dataset", {}))
    buckets = _take("dataset.buckets", BucketConfig, ds_raw.pop("buckets", {}))
    captions = _take("dataset.captions", CaptionConfig, ds_raw.pop("captions", {}))
    dataset = _take("dataset", DatasetSection, ds_raw)
    if dataset.missing_captions not in ("error", "empty"):
        raise ConfigError(f"[dataset] missing_captions must be \"error\" or \"empty\", got '{dataset.missing_captions}'")
    dataset = dataclasses.replace(dataset, path=resolve(dataset.path), cache_dir=resolve(dataset.cache_dir))

    adapter_raw = data.get("adapter", {})
    try:
        adapter = AdapterConfig.from_dict(adapter_raw)
    except ValueError as exc:
        raise ConfigError(f"[adapter]: {exc}") from exc

    tr_raw = dict(data.get("training", {}))
    timesteps = _take("training.timesteps", TimestepConfig, tr_raw.pop("timesteps", {}))
    optimizer = _take("training.optimizer", OptimizerConfig, tr_raw.pop("optimizer", {}))
    out_raw = dict(data.get("output", {}))
    bad_out = sorted(set(out_raw) - set(_OUTPUT_KEYS))
    if bad_out:
        raise ConfigError(f"[output]: unknown key(s) {', '.join(bad_out)}; valid keys: {', '.join(_OUTPUT_KEYS)}")
    train_kwargs = dict(tr_raw)
    excluded = ("timesteps", "optimizer", "output_dir", "output_name", "save_every", "save_dtype", "save_state", "sample_every")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(excluded)
    unknown_tr = sorted(set(train_kwargs) - names)
    if unknown_tr:
        raise ConfigError(f"[training]: unknown key(s) {', '.join(unknown_tr)}; valid keys: {', '.join(sorted(names))}")
    sample = _take("sample", SampleSection, data.get("sample", {}))
    if sample.every and not sample.prompts:
        raise ConfigError("[sample] every > 0 needs at least one prompt in prompts = [...]")
    try:
        check_size(sample.width, sample.height)  # the generator's rule: any multiple of 8 px from 16 px on
    except ValueError as exc:
        raise ConfigError(f"[sample] {exc}") from exc
    try:
        training = TrainConfig(
            **train_kwargs,
            timesteps=timesteps,
            optimizer=optimizer,
            output_dir=resolve(out_raw.get("dir", "output")),
            output_name=out_raw.get("name", "hdm_lycoris"),
            save_every=out_raw.get("save_every", 0),
            save_dtype=out_raw.get("save_dtype", "bf16"),
            save_state=out_raw.get("save_state", True),
            sample_every=sample.every,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[training]/[output]: {exc}") from exc
    resume = _take("resume", ResumeSection, data.get("resume", {}))
    resume = ResumeSection(state=resolve(resume.state), init_adapter=resolve(resume.init_adapter))
    if resume.state and resume.init_adapter:
        raise ConfigError("[resume]: set either state (exact resume) or init_adapter (start from an adapter's weights), not both")
    return FitConfig(model, encoders, dataset, buckets, captions, adapter, training, sample, resume)


def load_config(path: str | Path) -> FitConfig:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    cfg = parse_config(data, base=path.resolve().parent)
    return dataclasses.replace(cfg, source=path)
