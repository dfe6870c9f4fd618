"""LyCORIS adapters on an XUT, saved in the format stock ComfyUI's LoRA loader applies exactly.

The adapters themselves come from lycoris-lora (pinned: :data:`LYCORIS_VERSION`, the version
the format checks were made with). This module decides *which* layers get one, builds the
network without leaving LyCORIS' process-global settings changed, keeps the model's
forward patched only inside :meth:`Adapter.patched` (or between ``apply``/``restore``), and
writes and reads the files.

File format (see ``docs`` in README, "Training"):

* tensor keys ``lora_unet_<module path with . → _>.<suffix>``, the path relative to the
  XUT (what ComfyUI holds as ``BaseModel.diffusion_model``), suffixes exactly LyCORIS'
  (``lora_up.weight``, ``hada_w1_a``, ``lokr_w1``, ``oft_blocks``, ``diff`` …) plus a 0-d
  ``alpha``;
* kohya-style ``ss_*`` and ``modelspec.*`` metadata, plus ``hdm_adapter_config`` (this
  module's config as JSON) so the file can be re-created and resumed exactly.

Algorithms stock ComfyUI can apply exactly and that are offered here: lora, locon, loha,
lokr, dora (LyCORIS ``dora_wd`` with ``wd_on_output=False``: ComfyUI normalises the
output-axis variant with the wrong norm), glora, diag-oft (without ``rescaled``, which
ComfyUI ignores), boft, full. Refused: dylora (ComfyUI loads it as plain LoRA), ia3 and
tlora (ComfyUI has no loader). For OFT/BOFT with a norm ``constraint`` the exported
``alpha`` is rewritten to ``constraint·out_dim``, which is the clamp LyCORIS applies and
the value ComfyUI reads as its clamp.

``full`` is implemented here (:class:`FullDiff`, same ``diff``/``diff_b`` file keys) rather
than with LyCORIS' ``FullModule``: that one deletes the layer's ``weight`` Parameter while
applied and puts back a *new* CPU Parameter on ``restore()``, and cannot be applied twice,
which would corrupt a model shared with ComfyUI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..checkpoint import CheckpointError, key_diff, read_state_dict, save_safetensors

LYCORIS_VERSION = "4.1.3"
LORA_PREFIX = "lora_unet"
ALGORITHMS = ("lora", "locon", "loha", "lokr", "dora", "glora", "diag-oft", "boft", "full")
REFUSED_ALGORITHMS = {
    "dylora": "stock ComfyUI loads DyLoRA files as plain LoRA, which renders differently",
    "ia3": "stock ComfyUI has no (IA)^3 loader, so none of its keys would load",
    "tlora": "stock ComfyUI has no T-LoRA loader, so none of its keys would load",
}
TARGET_PRESETS = ("attn", "attn-mlp", "full")
_WEIGHT_DECOMPOSABLE = ("lora", "locon", "loha", "lokr")
_ATTN_SUFFIXES = (".attn.qkv", ".attn.out", ".xattn.q", ".xattn.kv", ".xattn.out")
_MLP_SUFFIXES = (".mlp.w12", ".mlp.w3")
#: LycorisNetwork class attributes that ``apply_preset`` writes (process-global state).
_LYCORIS_CLASS_STATE = (
    "ENABLE_CONV",
    "TARGET_REPLACE_MODULE",
    "TARGET_REPLACE_NAME",
    "LORA_PREFIX",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)
_LYCORIS_LOCK = threading.RLock()

log = logging.getLogger(__name__)


class AdapterError(ValueError):
    """A bad adapter configuration or file, with a message saying what to change."""


def import_lycoris():
    """The ``lycoris`` package, or an :class:`AdapterError` saying how to install it."""
    try:
        import lycoris  # noqa: F401
        from lycoris import wrapper
    except ImportError as exc:
        raise AdapterError(
            f"adapter training needs lycoris-lora (tested with {LYCORIS_VERSION}): "
            f"pip install lycoris-lora=={LYCORIS_VERSION}"
        ) from exc
    return wrapper


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AdapterConfig:
    """What adapter to train and where.

    ``dim``/``alpha``: rank and scale (LoRA-family scale = alpha/dim); for diag-oft ``dim``
    is the block size, for boft the butterfly factor, for lokr the rank of the decomposed
    factor (ignored when both factors are full). ``preset``: ``attn`` (self- and
    cross-attention projections), ``attn-mlp`` (+ the SwiGLU MLPs), ``full`` (every Linear,
    the patch Conv2d except for plain ``lora``, which is linear-only, and the shared-adaLN
    LayerNorms when ``train_norm``). ``include``/``exclude``: extra regexes matched against
    the whole module path (``re.fullmatch``, e.g. ``backbone\\.dec_blocks\\..*``).
    """

    algo: str = "lokr"
    dim: int = 16
    alpha: float = 1.0
    conv_dim: int | None = None
    conv_alpha: float | None = None
    preset: str = "attn-mlp"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    factor: int = -1
    full_matrix: bool = False
    decompose_both: bool = False
    unbalanced_factorization: bool = False
    use_tucker: bool = False
    use_scalar: bool = False
    weight_decompose: bool = False
    constraint: float = 0.0
    rescaled: bool = False
    train_norm: bool = False
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    bypass_mode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        algo = self.algo.lower()
        object.__setattr__(self, "algo", algo)
        if algo in REFUSED_ALGORITHMS:
            raise AdapterError(f"algorithm '{algo}' is not offered: {REFUSED_ALGORITHMS[algo]}. Choose one of: {', '.join(ALGORITHMS)}")
        if algo not in ALGORITHMS:
            raise AdapterError(f"unknown adapter algorithm '{self.algo}'; choose one of: {', '.join(ALGORITHMS)}")
        if self.preset not in TARGET_PRESETS:
            raise AdapterError(f"unknown target preset '{self.preset}'; choose one of: {', '.join(TARGET_PRESETS)}")
        if self.dim < 1:
            raise AdapterError(f"dim must be >= 1, got {self.dim}")
        if self.conv_dim is not None and self.conv_dim < 1:
            raise AdapterError(f"conv_dim must be >= 1 (or unset to use dim), got {self.conv_dim}")
        if self.weight_decompose and algo not in _WEIGHT_DECOMPOSABLE:
            raise AdapterError(
                f"weight_decompose (DoRA) works with {', '.join(_WEIGHT_DECOMPOSABLE)} only, not '{algo}'"
            )
        if self.rescaled and algo == "diag-oft":
            raise AdapterError(
                "diag-oft with rescaled=true is refused: stock ComfyUI loads the 'rescale' tensor but never applies it, "
                "so the file would render differently there. Use rescaled=false, or boft (whose rescale ComfyUI applies)"
            )
        if self.constraint < 0:
            raise AdapterError(f"constraint must be >= 0, got {self.constraint}")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise AdapterError(f"{name} must be in [0, 1), got {value}")
        if self.bypass_mode and algo == "full":
            raise AdapterError("bypass_mode is not available for the 'full' algorithm")
        for pattern in self.include + self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise AdapterError(f"include/exclude pattern '{pattern}' is not a valid regular expression: {exc}") from exc

    @property
    def lycoris_algo(self) -> str:
        return "lora" if self.algo == "dora" else self.algo

    @property
    def dora(self) -> bool:
        return self.algo == "dora" or self.weight_decompose

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"unknown adapter option(s): {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def lycoris_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lycoris.create_lycoris``."""
        kw: dict[str, Any] = {
            "algo": self.lycoris_algo,
            "linear_dim": self.dim,
            "linear_alpha": self.alpha,
            "conv_dim": self.conv_dim or self.dim,
            "conv_alpha": self.conv_alpha if self.conv_alpha is not None else self.alpha,
            "dropout": self.dropout,
            "rank_dropout": self.rank_dropout,
            "module_dropout": self.module_dropout,
            "use_tucker": self.use_tucker,
            "use_scalar": self.use_scalar,
            "train_norm": self.train_norm,
            "bypass_mode": self.bypass_mode,
        }
        if self.lycoris_algo == "lokr":
            kw.update(
                factor=self.factor,
                full_matrix=self.full_matrix,
                decompose_both=self.decompose_both,
                unbalanced_factorization=self.unbalanced_factorization,
            )
        if self.dora:
            kw.update(dora_wd=True, wd_on_output=False)
        if self.algo in ("diag-oft", "boft"):
            kw.update(constraint=self.constraint, rescaled=self.rescaled)
        return kw


# --------------------------------------------------------------------------- target selection
def _is_supported(module: nn.Module, train_norm: bool) -> bool:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return True
    return train_norm and isinstance(module, nn.LayerNorm)


def select_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Module paths (relative to ``model``) that get an adapter, in ``named_modules`` order."""
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for name, module in modules.items():
        if not name:
            continue
        if isinstance(module, nn.Linear):
            if config.preset == "full":
                chosen.add(name)
            elif name.endswith(_ATTN_SUFFIXES) or (config.preset == "attn-mlp" and name.endswith(_MLP_SUFFIXES)):
                chosen.add(name)
        elif isinstance(module, nn.Conv2d):
            if config.preset == "full" and config.algo != "lora":
                chosen.add(name)
        elif isinstance(module, nn.LayerNorm) and config.train_norm:
            chosen.add(name)
    example = next((n for n in modules if n.endswith(".attn.qkv")), "backbone.enc_blocks.0.0.attn.qkv")
    for pattern in config.include:
        hits = [n for n, m in modules.items() if n and re.fullmatch(pattern, n)]
        if not hits:
            raise AdapterError(f"include pattern '{pattern}' matches no module; module paths look like '{example}'")
        bad = [n for n in hits if not _is_supported(modules[n], config.train_norm)]
        if bad and len(bad) == len(hits):
            kinds = sorted({type(modules[n]).__name__ for n in bad})
            raise AdapterError(
                f"include pattern '{pattern}' matches only modules that cannot carry an adapter ({', '.join(kinds)}); "
                "adapters go on Linear and Conv2d layers (and LayerNorm with train_norm)"
            )
        chosen.update(n for n in hits if n not in bad)
    for pattern in config.exclude:
        hits = [n for n in modules if n and re.fullmatch(pattern, n)]
        if not hits:
            raise AdapterError(f"exclude pattern '{pattern}' matches no module; module paths look like '{example}'")
        chosen.difference_update(hits)
    if not chosen:
        raise AdapterError("the target preset, include and exclude rules leave no layer to train")
    return [n for n in modules if n in chosen]


def lora_name(module_path: str) -> str:
    """The LyCORIS/kohya module name ComfyUI maps: ``lora_unet_`` + path with dots → underscores."""
    return f"{LORA_PREFIX}_{module_path}".replace(".", "_")


@contextlib.contextmanager
def _quiet_lycoris() -> Iterator[None]:
    try:
        from lycoris.logging import logger as lyco_logger
    except ImportError:  # pragma: no cover - checked by import_lycoris
        yield
        return
    level = lyco_logger.level
    lyco_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lyco_logger.setLevel(level)


# --------------------------------------------------------------------------- the adapter
class Adapter(nn.Module):
    """A LyCORIS network on one model: parameters always registered, forward patched on demand.

    The base model is never modified: :meth:`apply` swaps the ``forward`` of the wrapped
    layers, :meth:`restore` puts them back (also on errors, via :meth:`patched`).
    Parameters live in float32 on the given device whatever the base model's dtype.
    """

    def __init__(self, network: nn.Module, config: AdapterConfig, module_paths: list[str]) -> None:
        super().__init__()
        self.config = config
        self.module_paths = list(module_paths)
        self.network = network
        self.modules_by_name = {m.lora_name: m for m in network.loras}
        for module in network.loras:  # register without patching (LyCORIS' apply_to does both)
            network.add_module(module.lora_name, module)
        self._applied = False

    # -- patching --------------------------------------------------------------------------
    @property
    def applied(self) -> bool:
        return self._applied

    def apply(self) -> None:
        if not self._applied:
            # what each layer's instance dict held before, so restore leaves no trace
            self._saved_forwards = [(m.org_module[0], m.org_module[0].__dict__.get("forward")) for m in self.network.loras]
            self._applied = True
            try:
                for module in self.network.loras:
                    module.apply_to()
            except BaseException:
                self.restore()  # never leave a half-patched model
                raise

    def restore(self) -> None:
        if self._applied:
            try:
                for module in reversed(self.network.loras):
                    module.restore()
            finally:
                # LyCORIS' restore re-binds the original forward as an instance attribute; put the
                # instance dict back exactly (class forward again visible to later patching)
                for layer, forward in self._saved_forwards:
                    if forward is None:
                        layer.__dict__.pop("forward", None)
                    else:
                        layer.forward = forward
                    layer.__dict__.pop("_lycoris_wrappers", None)
                    layer.__dict__.pop("_lycoris_original_forward", None)
                self._applied = False

    @contextlib.contextmanager
    def patched(self) -> Iterator["Adapter"]:
        """Model forward goes through the adapter inside the block, and is restored after it."""
        was = self._applied
        self.apply()
        try:
            yield self
        finally:
            if not was:
                self.restore()

    # -- tensors ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.network.named_parameters() if p.requires_grad]

    def raw_state(self) -> dict[str, torch.Tensor]:
        """Every parameter and persistent buffer as stored (float32 CPU copies): the exact-resume state."""
        out = {f"param/{n}": p.detach().to("cpu").clone() for n, p in self.network.named_parameters()}
        for mod_name, module in self.network.named_modules():
            for buf_name, buf in module.named_buffers(recurse=False):
                if buf_name in module._non_persistent_buffers_set:
                    continue
                out[f"buffer/{mod_name}.{buf_name}"] = buf.detach().to("cpu").clone()
        return out

    def load_raw_state(self, state: Mapping[str, torch.Tensor], *, source: str = "the training state") -> None:
        """Inverse of :meth:`raw_state` (strict: names and shapes must match)."""
        own = self.raw_state()
        problems = key_diff({k: list(v.shape) for k, v in own.items()}, {k: list(v.shape) for k, v in state.items()})
        if problems:
            raise AdapterError(
                f"{source} does not fit this adapter configuration ({self.config.algo}, preset {self.config.preset}): "
                f"{problems}. Resume with the settings the state was saved with"
            )
        params = dict(self.network.named_parameters())
        modules = dict(self.network.named_modules())
        with torch.no_grad():
            for key, value in state.items():
                kind, name = key.split("/", 1)
                if kind == "param":
                    target = params[name]
                else:
                    mod_name, _, buf_name = name.rpartition(".")
                    target = getattr(modules[mod_name], buf_name)
                target.copy_(value.to(target.dtype))

    def _oft_alpha_keys(self) -> list[str]:
        if self.config.algo not in ("diag-oft", "boft"):
            return []
        return [f"{name}.alpha" for name in self.modules_by_name]

    def export_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Tensors exactly as ComfyUI must read them (LyCORIS' own state-dict layout).

        Factors are cast to ``dtype``; ``alpha`` (0-d, read with ``.item()``) and DoRA's
        ``dora_scale`` stay float32. OFT/BOFT ``alpha`` becomes ``constraint·out_dim``.
        """
        out = {}
        for key, value in self.network.state_dict().items():
            value = value.detach().to("cpu")
            suffix = key.split(".", 1)[1]
            keep_fp32 = suffix in ("alpha", "dora_scale") or not value.is_floating_point()
            out[key] = value.to(torch.float32 if keep_fp32 else dtype).contiguous().clone()
        for key in self._oft_alpha_keys():
            module = self.modules_by_name[key[: -len(".alpha")]]
            out[key] = torch.tensor(float(module.constraint), dtype=torch.float32)
        return out

    def load_exported(self, tensors: Mapping[str, torch.Tensor], *, source: str = "the file") -> None:
        """Load tensors in the exported (ComfyUI) layout, e.g. to continue from a saved adapter.

        Exact when the file was saved in float32; reduced-precision files give their rounded
        values (use the training state for an exact resume).
        """
        expected = {k: list(v.shape) for k, v in self.export_tensors().items()}
        got = {k: list(v.shape) for k, v in tensors.items()}
        problems = key_diff(expected, got)
        if problems:
            raise AdapterError(
                f"{source} does not fit this adapter configuration ({self.config.algo}, preset {self.config.preset}): "
                f"{problems}. Use the adapter settings the file was trained with"
            )
        oft_alpha = set(self._oft_alpha_keys())  # defined by the config, rewritten on export
        own = self.network.state_dict()
        tensors = {k: v.to(own[k].dtype) for k, v in tensors.items() if k not in oft_alpha}
        with torch.no_grad():
            result = self.network.load_state_dict(tensors, strict=False)
        missing = [k for k in result.missing_keys if k not in oft_alpha and not k.endswith(".scalar")]
        if missing or result.unexpected_keys:
            raise AdapterError(f"{source}: LyCORIS did not take keys {missing[:3]} / {result.unexpected_keys[:3]}")

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not a layer
        raise TypeError("an Adapter is not called directly; call the model inside adapter.patched()")


class FullDiff(nn.Module):
    """``full``: a trainable difference added to a layer's weight (and bias).

    Saved as ``diff``/``diff_b``, which ComfyUI adds to the weights. The layer's own
    Parameters are never replaced; ``apply_to``/``restore`` only swap its ``forward``.
    """

    def __init__(self, lora_name: str, org_module: nn.Module) -> None:
        super().__init__()
        if not isinstance(org_module, (nn.Linear, nn.Conv2d)):
            raise AdapterError(f"'full' adapts Linear and Conv2d layers, not {type(org_module).__name__}")
        self.lora_name = lora_name
        self.org_module = [org_module]
        self.diff = nn.Parameter(torch.zeros(org_module.weight.shape, dtype=torch.float32, device=org_module.weight.device))
        bias = org_module.bias
        self.diff_b = None if bias is None else nn.Parameter(torch.zeros(bias.shape, dtype=torch.float32, device=bias.device))
        self._org_forward = None

    def apply_to(self) -> None:
        module = self.org_module[0]
        self._org_forward = module.__dict__.get("forward")
        module.forward = self._patched_forward

    def restore(self) -> None:
        module = self.org_module[0]
        if self._org_forward is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = self._org_forward

    def _patched_forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.org_module[0]
        weight = module.weight + self.diff.to(module.weight.dtype)
        bias = None if module.bias is None else module.bias + self.diff_b.to(module.bias.dtype)
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias)


class _Network(nn.Module):
    """Container with LyCORIS' ``loras`` interface, for modules built here."""

    def __init__(self, loras: list[nn.Module]) -> None:
        super().__init__()
        self.loras = loras


def _build_full_network(model: nn.Module, paths: list[str], config: AdapterConfig) -> nn.Module:
    modules = dict(model.named_modules())
    loras: list[nn.Module] = []
    for path in paths:
        module = modules[path]
        if isinstance(module, nn.LayerNorm):
            from lycoris.modules.norms import NormModule

            loras.append(NormModule(lora_name(path), module, 1.0, config.rank_dropout, config.module_dropout))
        else:
            loras.append(FullDiff(lora_name(path), module))
    return _Network(loras)


def create_adapter(
    model: nn.Module,
    config: AdapterConfig,
    *,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> Adapter:
    """Build (but do not apply) a LyCORIS adapter for ``model``.

    LyCORIS keeps its target rules in class attributes; they are set for this call under a
    lock and put back afterwards, so other users of LyCORIS in the same process (another
    node pack) are not affected. ``seed`` makes the random initialisation reproducible
    without touching the global RNG.
    """
    wrapper = import_lycoris()
    paths = select_modules(model, config)
    if config.algo == "full":
        with _quiet_lycoris():
            network = _build_full_network(model, paths, config)
    else:
        network = _create_lycoris_network(wrapper, model, paths, config, seed)
    made = {m.lora_name for m in network.loras}
    expected = {lora_name(p) for p in paths}
    if made != expected:
        missing = sorted(expected - made)[:5]
        raise AdapterError(
            f"LyCORIS wrapped {len(made)} of the {len(expected)} selected layers (not wrapped: {', '.join(missing)}); "
            f"this lycoris-lora version may differ from the tested {LYCORIS_VERSION}"
        )
    unsupported = [m.lora_name for m in network.loras if getattr(m, "not_supported", False)]
    if unsupported:
        raise AdapterError(f"LyCORIS cannot adapt: {', '.join(unsupported[:5])}")
    adapter = Adapter(network, config, paths)
    adapter.to(device=device or _model_device(model), dtype=torch.float32)
    adapter.requires_grad_(True)
    return adapter


def _create_lycoris_network(wrapper, model: nn.Module, paths: list[str], config: AdapterConfig, seed: int | None):
    Network = wrapper.LycorisNetwork
    with _LYCORIS_LOCK, _quiet_lycoris():
        saved = {name: getattr(Network, name) for name in _LYCORIS_CLASS_STATE}
        try:
            Network.apply_preset(
                {
                    "enable_conv": True,
                    "target_module": [],
                    "target_name": [re.escape(p) + "$" for p in paths],
                    "module_algo_map": {},
                    "name_algo_map": {},
                    "lora_prefix": LORA_PREFIX,
                    "use_fnmatch": False,
                    "exclude_name": [],
                }
            )
            fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
            with fork:
                if seed is not None:
                    torch.manual_seed(seed)
                try:
                    return wrapper.create_lycoris(model, 1.0, warn_on_unmatched=False, **config.lycoris_kwargs())
                except (ValueError, AssertionError, RuntimeError, KeyError) as exc:
                    raise AdapterError(
                        f"LyCORIS could not build a '{config.algo}' adapter with dim={config.dim}: {exc}{_algo_hint(config)}"
                    ) from exc
        finally:
            for name, value in saved.items():
                setattr(Network, name, value)


def _algo_hint(config: AdapterConfig) -> str:
    if config.algo == "boft":
        return (
            ". BOFT needs every adapted layer's output size to be (even m <= dim)·2^p; the attention qkv layer "
            "(3·width outputs) needs dim >= 6"
        )
    if config.algo == "diag-oft":
        return ". diag-oft splits each layer's outputs into blocks of size close to dim"
    return ""


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- files
def kohya_metadata(config: AdapterConfig, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``ss_*``/``modelspec.*`` metadata (all strings) plus our config for exact re-creation."""
    network_args = {k: v for k, v in config.lycoris_kwargs().items() if k not in ("linear_dim", "linear_alpha")}
    network_args.update(preset=config.preset, include=list(config.include), exclude=list(config.exclude))
    meta: dict[str, Any] = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": config.dim,
        "ss_network_alpha": config.alpha,
        "ss_network_args": json.dumps(network_args, sort_keys=True),
        "ss_base_model_version": "hdm_xut",
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"hdm-xut/lycoris-{config.algo}",
        "modelspec.implementation": "https://github.com/KohakuBlueleaf/HDM",
        "hdm_adapter_config": json.dumps(config.to_dict(), sort_keys=True),
        "hdm_lycoris_version": _lycoris_version(),
    }
    for key, value in (extra or {}).items():
        meta[key] = value
    return {k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in meta.items()}


def _lycoris_version() -> str:
    try:
        from importlib.metadata import version

        return version("lycoris-lora")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


def save_adapter(
    adapter: Adapter,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapter as a ComfyUI-loadable ``.safetensors`` file (atomically)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterError(f"{path}: adapters are saved as .safetensors (pickles cannot be loaded safely)")
    return save_safetensors(adapter.export_tensors(dtype), path, kohya_metadata(adapter.config, metadata))


@dataclass
class AdapterFile:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: AdapterConfig | None = field(default=None)


def read_adapter(path: str | Path) -> AdapterFile:
    """Tensors, metadata and (when the file was written here) the adapter config of a file."""
    sd = read_state_dict(path)
    meta = dict(getattr(sd, "metadata", {}) or {})
    tensors = {k: sd[k] for k in sd}
    config = None
    if "hdm_adapter_config" in meta:
        try:
            config = AdapterConfig.from_dict(json.loads(meta["hdm_adapter_config"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise AdapterError(f"{path}: its hdm_adapter_config metadata is damaged ({exc})") from exc
    return AdapterFile(tensors, meta, config)


def load_adapter(model: nn.Module, path: str | Path, *, device: torch.device | str | None = None) -> Adapter:
    """Re-create the adapter a file was trained with (from its metadata) and load its tensors."""
    file = read_adapter(path)
    if file.config is None:
        raise AdapterError(
            f"{path}: no hdm_adapter_config metadata, so the adapter cannot be re-created for training "
            "(it can still be used for inference with a LoRA loader)"
        )
    adapter = create_adapter(model, file.config, device=device)
    adapter.load_exported(file.tensors, source=str(path))
    return adapter


# --------------------------------------------------------------------------- HDM trainer files
_HDM_PREFIXES = ("lycoris_model_", "lycoris_")
_ADAPTER_SUFFIXES = (
    "alpha", "dora_scale", "lora_up.weight", "lora_down.weight", "lora_mid.weight", "hada_w1_a", "hada_w1_b",
    "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
    "lokr_w2_b", "lokr_t2", "a1.weight", "a2.weight", "b1.weight", "b2.weight", "oft_blocks", "rescale", "diff",
    "diff_b", "w_norm", "b_norm",
)  # fmt: skip


def rename_hdm_key(key: str) -> str | None:
    """``lycoris_model_<path>.<suffix>`` (HDM's trainer) → ``lora_unet_<path>.<suffix>``; None if not an adapter key.

    HDM's trainer wraps the diffusers-style wrapper whose XUT is ``.model``, so its names
    carry ``model_``; a file made by wrapping the XUT itself (``lycoris_<path>``) and files
    already in the ``lora_unet_`` format are accepted too.
    """
    name, _, suffix = key.partition(".")
    if suffix not in _ADAPTER_SUFFIXES:
        return None
    for prefix in _HDM_PREFIXES + (LORA_PREFIX + "_",):
        if name.startswith(prefix):
            return f"{LORA_PREFIX}_{name[len(prefix):]}.{suffix}"
    return None


@dataclass
class ConversionReport:
    path: Path
    converted: int
    modules: int
    dropped: list[str]


def convert_hdm_adapter(
    source: str | Path,
    dest: str | Path,
    *,
    dtype: torch.dtype | None = None,
    module_paths: list[str] | None = None,
) -> ConversionReport:
    """Convert an adapter saved by HDM's own trainer (``lycoris_model_*`` keys) for ComfyUI.

    HDM's trainer wraps its diffusers-style wrapper, whose XUT is ``.model``, with LyCORIS'
    default ``lycoris`` prefix and saves ``torch.save`` ``.pt`` files. Those are read with
    ``torch.load(weights_only=True)`` only; keys are renamed ``lycoris_model_X`` →
    ``lora_unet_X``; tensors that are not adapter factors (full parameters the trainer kept
    trainable) are dropped and listed in the report. ``module_paths`` (the XUT's module
    names) makes the converter verify that every renamed module exists.
    """
    source, dest = Path(source), Path(dest)
    try:
        sd = read_state_dict(source, allow_pickle=True)
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from exc
    known = {lora_name(p) for p in module_paths} if module_paths is not None else None
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown_modules: set[str] = set()
    for key in sd:
        new_key = rename_hdm_key(key)
        if new_key is None:
            dropped.append(key)
            continue
        new_name, suffix = new_key.split(".", 1)
        if known is not None and new_name not in known:
            unknown_modules.add(new_name)
        value = sd[key]
        if dtype is not None and value.is_floating_point() and suffix not in ("alpha", "dora_scale"):
            value = value.to(dtype)
        out[new_key] = value
    if not out:
        raise AdapterError(
            f"{source}: no LyCORIS adapter tensors found (expected keys like "
            "'lycoris_model_backbone_enc_blocks_0_0_attn_qkv.lokr_w1')"
        )
    if unknown_modules:
        raise AdapterError(
            f"{source}: {len(unknown_modules)} adapted modules do not exist in this XUT "
            f"(e.g. {', '.join(sorted(unknown_modules)[:3])}); the file is for another model layout"
        )
    modules = {k.split(".", 1)[0] for k in out}
    meta = {
        "ss_network_module": "lycoris.kohya",
        "ss_base_model_version": "hdm_xut",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "hdm-xut/lycoris",
        "hdm_converted_from": source.name,
    }
    save_safetensors(out, dest, meta)
    return ConversionReport(dest, len(out), len(modules), dropped)
