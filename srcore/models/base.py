"""What every model in the zoo shares: a typed config, a scale, features for distillation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from srcore.config import check_scale
from srcore.errors import DataError

__all__ = ["DIV2K_MEAN", "Features", "ModelConfig", "SRModel", "check_input_size"]

# RGB mean of DIV2K, subtracted by the SwinIR-family shells (DVMSR, MaIR).
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class ModelConfig(BaseModel):
    """Base of every model config: validated, immutable, serialisable into checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: int = 4

    @field_validator("scale")
    @classmethod
    def _scale_supported(cls, v: int) -> int:
        return check_scale(v)


@dataclass
class Features:
    """Intermediate maps for distillation: ``blocks`` after each body stage, ``deep`` before the upsampler."""

    deep: torch.Tensor
    blocks: list[torch.Tensor] = field(default_factory=list)


class SRModel(nn.Module):
    """An SR network: RGB NCHW float in [0, 1] in, ``scale`` times larger out."""

    arch: str = ""
    config: ModelConfig
    # Smallest LR height and width the network accepts (strided/pooled branches need room).
    min_input_size: int = 1

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward_features(self, x: torch.Tensor) -> Features:  # pragma: no cover - interface
        raise NotImplementedError

    def reconstruct(self, features: Features, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.forward_features(x), x)

    def set_scan_backend(self, backend: str | None) -> SRModel:
        """Force a selective-scan back-end in every Mamba block (None: by device)."""
        for m in self.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = backend
        return self


def check_input_size(model: SRModel, height: int, width: int, name: str = "input") -> None:
    """Refuse, before any compute, an LR input smaller than ``model`` accepts; every entry point
    (upscale, evaluation, tiling) calls this rather than letting the network fail inside."""
    least = model.min_input_size
    if height < least or width < least:
        raise DataError(f"{name}: {width}x{height} is smaller than {model.arch}'s minimum input of "
                        f"{least}x{least} pixels; use a larger image or a model without that limit")
