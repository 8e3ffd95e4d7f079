"""Bicubic upscaling as a model, so the baseline goes through the same evaluation path."""

from __future__ import annotations

import torch

from srcore.data.imresize import imresize
from srcore.models.base import Features, ModelConfig, SRModel

__all__ = ["Bicubic", "BicubicConfig"]


class BicubicConfig(ModelConfig):
    pass


class Bicubic(SRModel):
    """MATLAB-compatible bicubic interpolation by ``scale`` (no parameters)."""

    arch = "bicubic"

    def __init__(self, config: BicubicConfig | None = None) -> None:
        super().__init__()
        self.config = config or BicubicConfig()

    def forward_features(self, x: torch.Tensor) -> Features:
        return Features(deep=x)

    def reconstruct(self, features: Features, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, scale=float(self.config.scale))
