"""Architecture description of an XUT (Cross-U-Transformer) backbone.

The field names follow the constructor arguments of the released model's config files
(``config/arch/xut-*.json``) so a config written for the original loads here unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TreadConfig:
    """TREAD token routing: blocks before/after the routed backbone and the training drop rate."""

    prev_trns_depth: int = 1
    post_trns_depth: int = 3
    dropout_ratio: float = 0.5


@dataclass(frozen=True)
class XUTConfig:
    patch_size: int = 2
    input_dim: int = 4
    dim: int = 1024
    ctx_dim: int = 1024
    ctx_size: int = 256
    heads: int = 16
    dim_head: int = 64
    mlp_dim: int = 3072
    depth: int = 4
    enc_blocks: int = 1
    dec_blocks: int = 3
    addon_info_embs_dim: int = 1
    tread_config: TreadConfig | None = field(default_factory=TreadConfig)

    def __post_init__(self) -> None:
        if isinstance(self.tread_config, Mapping):
            object.__setattr__(self, "tread_config", TreadConfig(**self.tread_config))
        if self.dim_head % 4:
            raise ValueError(f"dim_head must be a multiple of 4 for axial RoPE, got {self.dim_head}")
        if self.dec_blocks < 1 or self.enc_blocks < 1 or self.depth < 1:
            raise ValueError("depth, enc_blocks and dec_blocks must all be >= 1")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "XUTConfig":
        """Build from a reference-style config dict, rejecting features this port does not have."""
        cfg = dict(cfg)
        unsupported = {
            "shared_adaln": True,
            "concat_ctx": True,
            "dec_ctx": False,
            "use_dyt": False,
            "double_t": False,
            "class_cond": 0,
        }
        for key, supported in unsupported.items():
            value = cfg.pop(key, supported)
            if value != supported:
                raise ValueError(
                    f"XUT config option {key}={value!r} is not supported (only {key}={supported!r},"
                    " the setting of every released HDM model)"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(cfg) - known)
        if extra:
            raise ValueError(f"unknown XUT config keys: {', '.join(extra)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def inner_dim(self) -> int:
        return self.heads * self.dim_head


#: The released HDM model (``xut-small-1024-tread``): 343,176,208 parameters.
HDM_XUT_SMALL = XUTConfig()
