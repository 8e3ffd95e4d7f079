"""Small building blocks shared by several architectures."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelMajorLinear", "DropPath", "LayerNorm2d"]


class DropPath(nn.Module):
    """Stochastic depth: zero whole samples with probability ``p`` during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map ("channels_first")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]



class ChannelMajorLinear(nn.Linear):
    """A Linear of (B, L, C) tokens whose output is channel-major, (B, O, L) contiguous.

    One bmm with the tokens read transposed writes that layout directly; ``Linear(...).transpose``
    would be a strided view that convolutions and kernels copy, and ``torch.matmul(weight,
    tokens.transpose(1, 2))`` computes it token-major and copies it. A module (same parameters
    and keys as ``nn.Linear``) so that FLOP counts per module still see it."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(self.weight.expand(tokens.shape[0], -1, -1), tokens.transpose(1, 2))
        return out if self.bias is None else out + self.bias[:, None]
