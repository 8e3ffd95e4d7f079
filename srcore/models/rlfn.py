"""RLFN (Kong et al., NTIRE 2022 ESR winner), the pruned variant used as the NTIRE 2024 baseline.

Trained on [0, 255] inputs: the [0, 1] public API scales inside ``forward``. Keys follow the
official ``RLFN_Prune`` so official files load with an identity conversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srcore.models.base import Features, ModelConfig, SRModel

__all__ = ["RLFN", "RLFNConfig", "convert_official"]


class RLFNConfig(ModelConfig):
    feature_channels: int = 46
    mid_channels: int = 48
    esa_channels: int = 16
    num_blocks: int = 4
    rgb_range: float = 255.0


class ESA(nn.Module):
    """Enhanced spatial attention: strided conv, max-pool, conv, bilinear up, sigmoid mask."""

    def __init__(self, esa_channels: int, channels: int) -> None:
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3)
        c3 = F.interpolate(self.conv3(c1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class RLFB(nn.Module):
    def __init__(self, channels: int, mid: int, esa_channels: int) -> None:
        super().__init__()
        self.c1_r = nn.Conv2d(channels, mid, 3, padding=1)
        self.c2_r = nn.Conv2d(mid, mid, 3, padding=1)
        self.c3_r = nn.Conv2d(mid, channels, 3, padding=1)
        self.c5 = nn.Conv2d(channels, channels, 1)
        self.esa = ESA(esa_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.c1_r(x), 0.05)
        out = F.leaky_relu(self.c2_r(out), 0.05)
        out = F.leaky_relu(self.c3_r(out), 0.05)
        return self.esa(self.c5(out + x))


class RLFN(SRModel):
    arch = "rlfn"
    # ESA: a stride-2 3x3 conv then a 7x7 max-pool: (15 - 3) // 2 + 1 = 7 is the least that fits.
    min_input_size = 15

    def __init__(self, config: RLFNConfig | None = None) -> None:
        super().__init__()
        cfg = config or RLFNConfig()
        self.config = cfg
        c = cfg.feature_channels
        self.conv_1 = nn.Conv2d(3, c, 3, padding=1)
        for i in range(cfg.num_blocks):
            self.add_module(f"block_{i + 1}", RLFB(c, cfg.mid_channels, cfg.esa_channels))
        self.conv_2 = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(c, 3 * cfg.scale**2, 3, padding=1),
                                       nn.PixelShuffle(cfg.scale))

    def forward_features(self, x: torch.Tensor) -> Features:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"RLFN's ESA needs inputs of at least {self.min_input_size} pixels a side, "
                             f"got {tuple(x.shape[-2:])}")
        f0 = self.conv_1(x * self.config.rgb_range)
        out, blocks = f0, []
        for i in range(self.config.num_blocks):
            out = getattr(self, f"block_{i + 1}")(out)
            blocks.append(out)
        return Features(deep=self.conv_2(out) + f0, blocks=blocks)

    def reconstruct(self, features: Features, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(features.deep) / self.config.rgb_range


def convert_official(state_dict: dict) -> dict:
    """Official ``RLFN_Prune`` keys are ours; only wrapper prefixes are dropped."""
    return dict(state_dict)
