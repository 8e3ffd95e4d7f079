"""SRConvNet (Li et al., IJCV 2024/2025): Fourier modulated attention + dynamic mixing layers.

The released code targets an old torch (``torch.rfft``); this follows the fixed version with
``torch.fft.rfft2/irfft2(norm="ortho")``. Trained on [0, 255]: the [0, 1] public API scales
inside ``forward``. Keys follow the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srcore.models.base import DIV2K_MEAN, Features, ModelConfig, SRModel
from srcore.models.layers import LayerNorm2d

__all__ = ["SRConvNet", "SRConvNetConfig"]


class SRConvNetConfig(ModelConfig):
    dim: int = 64
    num_blocks: int = 8
    num_heads: int = 8
    num_kernels: int = 16
    rgb_range: float = 255.0

    def model_post_init(self, _ctx) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")


class MeanShift(nn.Conv2d):
    """EDSR-style 1x1 colour transform that subtracts (sign -1) or adds (+1) the DIV2K mean."""

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(DIV2K_MEAN))


class FourierUnit(nn.Module):
    """rfft2 (orthonormal) -> real/imag as 2C channels -> 1x1 conv -> GELU -> irfft2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        # Channel order: c0.re, c0.im, c1.re ...
        stacked = torch.stack((spec.real, spec.imag), dim=2).reshape(b, 2 * c, h, -1)
        stacked = F.gelu(self.conv_layer(stacked)).view(b, c, 2, h, -1)
        spec = torch.complex(stacked[:, :, 0], stacked[:, :, 1])
        return torch.fft.irfft2(spec, s=(h, w), norm="ortho").to(x.dtype)


class FMA(nn.Module):
    """Fourier modulated attention with per-head layer scale and conditional position encoding."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.layer_scale = nn.Parameter(torch.ones(heads))
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.a = FourierUnit(dim)
        self.v = nn.Conv2d(dim, dim, 1)
        self.CPE = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pos = self.CPE(x)
        xn = self.norm(x)
        a = self.a(xn).view(b, self.heads, c // self.heads, h * w)
        v = self.v(xn).view(b, self.heads, c // self.heads, h * w)
        attn = torch.softmax(self.layer_scale.view(1, -1, 1, 1) * (a * v), dim=-1)
        return self.proj(attn.view(b, c, h, w) + pos) + x


class DynamicDWConv(nn.Module):
    """Depthwise conv whose kernel is a per-sample sigmoid-weighted sum of a bank of kernels."""

    def __init__(self, dim: int, kernel_size: int, num_kernels: int) -> None:
        super().__init__()
        self.k = kernel_size
        self.attention = nn.Module()
        self.attention.conv1 = nn.Conv2d(dim, dim // 8, 1)
        self.attention.conv2 = nn.Conv2d(dim // 8, num_kernels, 1)
        self.aggregation = nn.Module()
        self.aggregation.weight = nn.Parameter(
            torch.randn(num_kernels, dim, 1, kernel_size, kernel_size) * 0.02)
        self.aggregation.bias = nn.Parameter(torch.zeros(num_kernels, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pooled = x.mean(dim=(2, 3), keepdim=True)
        att = torch.sigmoid(self.attention.conv2(F.gelu(self.attention.conv1(pooled)))).view(b, -1)
        weight = torch.einsum("bk,kcxyz->bcxyz", att, self.aggregation.weight).reshape(
            b * c, 1, self.k, self.k)
        bias = (att @ self.aggregation.bias).reshape(b * c)
        # All samples in one grouped conv: the batch folds into the channel axis.
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias, padding=self.k // 2, groups=b * c)
        return out.view(b, c, h, w)


class _ConvWrap(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv


class DML(nn.Module):
    """Dynamic mixing layer: LN -> 1x1 expand -> GELU -> dynamic dw 5x5 | 7x7 -> interleave -> 1x1."""

    def __init__(self, dim: int, num_kernels: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.conv1 = _ConvWrap(DynamicDWConv(dim, 5, num_kernels))
        self.conv2 = _ConvWrap(DynamicDWConv(dim, 7, num_kernels))
        self.proj_out = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1, y2 = F.gelu(self.proj_in(self.norm(x))).chunk(2, dim=1)
        y1 = F.gelu(self.conv1.conv(y1))
        y2 = F.gelu(self.conv2.conv(y2))
        mixed = torch.stack((y1, y2), dim=2).flatten(1, 2)  # x1_c0, x2_c0, x1_c1, ...
        return self.proj_out(mixed) + x


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, num_kernels: int) -> None:
        super().__init__()
        self.attention = FMA(dim, heads)
        self.ffn = DML(dim, num_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attention(x))


class SRConvNet(SRModel):
    arch = "srconvnet"

    def __init__(self, config: SRConvNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or SRConvNetConfig()
        self.config = cfg
        d = cfg.dim
        # Defined (and saved) by the release but never applied in its forward pass; kept so the
        # official state dict loads strictly and the parameter count matches.
        self.sub_mean = MeanShift(cfg.rgb_range, -1)
        self.add_mean = MeanShift(cfg.rgb_range, +1)
        self.to_feat = nn.Conv2d(3, d, 3, padding=1)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.num_kernels) for _ in range(cfg.num_blocks))
        if cfg.scale == 4:
            ups: list[nn.Module] = []
            for _ in range(2):
                ups += [nn.Conv2d(d, 4 * d, 1), nn.PixelShuffle(2), nn.GELU()]
        else:
            ups = [nn.Conv2d(d, d * cfg.scale**2, 1), nn.PixelShuffle(cfg.scale), nn.GELU()]
        self.upsampling = nn.Sequential(*ups)
        self.tail = nn.Conv2d(d, 3, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> Features:
        f0 = self.to_feat(x * self.config.rgb_range)
        out, blocks = f0, []
        for blk in self.blocks:
            out = blk(out)
            blocks.append(out)
        return Features(deep=out + f0, blocks=blocks)

    def reconstruct(self, features: Features, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        return self.tail(self.upsampling(features.deep)) / self.config.rgb_range + base
