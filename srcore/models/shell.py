"""The SwinIR-style shell shared by DVMSR and MaIR.

mean shift -> conv3x3 -> row-major tokens + LayerNorm -> residual groups (blocks on tokens,
conv3x3 on the map, + group input) -> LayerNorm -> conv3x3 + shallow skip -> pixel-shuffle
upsampler ("pixelshuffledirect") -> undo the mean shift. No image-level skip.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from srcore.models.base import DIV2K_MEAN, Features, ModelConfig, SRModel

__all__ = ["ShellConfig", "TokenShell"]

# make_block(dim, group_index, block_index, drop_path) -> module taking (tokens, context), where the
# context is what ``TokenShell.block_context`` gives: (H, W) first, then whatever a model adds.
BlockFactory = Callable[[int, int, int, float], nn.Module]


class ShellConfig(ModelConfig):
    embed_dim: int = 60
    depths: tuple[int, ...] = (2, 2, 2, 2)
    img_range: float = 1.0
    drop_path_rate: float = 0.1

    def model_post_init(self, _ctx) -> None:
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be a non-empty list of positive ints, got {list(self.depths)}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")


class _BlockList(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class ResidualGroup(nn.Module):
    """Blocks on tokens -> conv3x3 on the map -> + group input."""

    def __init__(self, dim: int, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.residual_group = _BlockList(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, tokens: torch.Tensor, hw: tuple) -> torch.Tensor:
        y = tokens
        for blk in self.residual_group.blocks:
            y = blk(y, hw)
        y = rearrange(y, "b (h w) c -> b c h w", h=hw[0], w=hw[1])
        return rearrange(self.conv(y), "b c h w -> b (h w) c") + tokens


class _PatchNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class TokenShell(SRModel):
    """Shell with pluggable token blocks; subclasses pass their block factory."""

    def __init__(self, cfg: ShellConfig, make_block: BlockFactory) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, c, 3, 1, 1)
        self.patch_embed = _PatchNorm(c)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        layers, start = [], 0
        for gi, depth in enumerate(cfg.depths):
            blocks = [make_block(c, gi, bi, rates[start + bi]) for bi in range(depth)]
            layers.append(ResidualGroup(c, blocks))
            start += depth
        self.layers = nn.ModuleList(layers)
        self.norm_f = nn.LayerNorm(c)
        self.conv_after_body = nn.Conv2d(c, c, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(c, 3 * cfg.scale**2, 3, 1, 1), nn.PixelShuffle(cfg.scale))

    def block_context(self, x: torch.Tensor) -> tuple:
        """What every block gets beside its tokens, computed once per forward from the (B, C, H, W)
        map: (H, W); a subclass may append what its blocks share (e.g. scan orders)."""
        return tuple(x.shape[-2:])

    def forward_features(self, x: torch.Tensor) -> Features:
        h, w = x.shape[-2:]
        x = (x - self.mean) * self.config.img_range
        f0 = self.conv_first(x)
        tokens = self.patch_embed.norm(rearrange(f0, "b c h w -> b (h w) c"))
        context = self.block_context(f0)
        blocks = []
        for layer in self.layers:
            tokens = layer(tokens, context)
            blocks.append(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w))
        body = rearrange(self.norm_f(tokens), "b (h w) c -> b c h w", h=h, w=w)
        return Features(deep=self.conv_after_body(body) + f0, blocks=blocks)

    def reconstruct(self, features: Features, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(features.deep) / self.config.img_range + self.mean
