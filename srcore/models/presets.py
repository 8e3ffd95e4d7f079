"""Named presets of every architecture: ``build(name, scale=..., **overrides)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from srcore.errors import ConfigError
from srcore.models.base import ModelConfig, SRModel

__all__ = ["Preset", "build", "config_for", "list_presets", "preset", "preset_names"]


@dataclass(frozen=True)
class Preset:
    """A named configuration of one architecture class."""

    name: str
    arch: str
    model_cls: type[SRModel]
    config_cls: type[ModelConfig]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Maps an official checkpoint's state dict to this implementation's keys.
    convert: Callable[[dict], dict] | None = None


def _presets() -> dict[str, Preset]:
    # Imported here so that importing the registry does not import every architecture eagerly.
    from srcore.models import bicubic, dvmsr, ibmdn, mair, rlfn, srconvnet

    items = [
        Preset("bicubic", "bicubic", bicubic.Bicubic, bicubic.BicubicConfig, {}, "MATLAB bicubic baseline"),
        Preset("dvmsr", "dvmsr", dvmsr.DVMSR, dvmsr.DVMSRConfig, {}, "DVMSR student (embed 60, 4x2 ViMM)"),
        Preset("dvmsr_teacher", "dvmsr", dvmsr.DVMSR, dvmsr.DVMSRConfig,
               {"embed_dim": 192, "depths": (2,) * 8}, "DVMSR teacher (embed 192, 8x2 ViMM)"),
        Preset("mair_t", "mair", mair.MaIR, mair.MaIRConfig, mair.TINY, "MaIR-T (tiny, d_state 1)",
               mair.convert_official),
        Preset("mair_s", "mair", mair.MaIR, mair.MaIRConfig, mair.SMALL, "MaIR-S (small, d_state 16)",
               mair.convert_official),
        Preset("srconvnet", "srconvnet", srconvnet.SRConvNet, srconvnet.SRConvNetConfig, {},
               "SRConvNet (dim 64, 8 blocks)"),
        Preset("ibmdn", "ibmdn", ibmdn.IBMDN, ibmdn.IBMDNConfig, {}, "IBMDN, NTIRE 2025 release (48 ch)",
               ibmdn.convert_official),
        Preset("rlfn", "rlfn", rlfn.RLFN, rlfn.RLFNConfig, {}, "RLFN pruned (46/48/16), NTIRE baseline",
               rlfn.convert_official),
    ]
    return {p.name: p for p in items}


def list_presets() -> list[Preset]:
    return list(_presets().values())


def preset_names() -> list[str]:
    """Every preset name, in the zoo's order (the one list the CLI, docs and tests share)."""
    return list(_presets())


def preset(name: str) -> Preset:
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(presets)}")
    return presets[name]


def config_for(name: str, scale: int = 4, **overrides: Any) -> ModelConfig:
    """The validated config of preset ``name`` at ``scale`` with ``overrides`` applied."""
    p = preset(name)
    values = {**p.defaults, **overrides, "scale": scale}
    try:
        return p.config_cls(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"model {name}: invalid config ({problems})") from None


def build(name: str, scale: int = 4, **overrides: Any) -> SRModel:
    """Build preset ``name`` at ``scale`` (2, 3 or 4), overriding any config field."""
    return preset(name).model_cls(config_for(name, scale, **overrides))
