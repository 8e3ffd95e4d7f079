"""Running a model on images: uint8 in, uint8 out, optionally tile by tile for large inputs."""

from __future__ import annotations

import numpy as np
import torch

from srcore.models.base import SRModel

__all__ = ["to_tensor", "to_uint8", "upscale_tensor", "upscale_image"]


def to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div_(255).to(device)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW float -> HxWx3 uint8 (clamp to [0, 1], x255, round), the evaluation convention."""
    return x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _tiles(length: int, tile: int, overlap: int) -> list[int]:
    step = tile - overlap
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@torch.inference_mode()
def upscale_tensor(model: SRModel, x: torch.Tensor, tile: int | None = None, overlap: int = 16) -> torch.Tensor:
    """Super-resolve ``x`` (B, 3, H, W). With ``tile``, process overlapping tiles and keep each
    tile's centre, so memory is bounded by the tile size; for models with a bounded receptive
    field smaller than ``overlap / 2`` the result equals whole-image inference."""
    if tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile):
        return model(x)
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    s = model.scale
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h * s, w * s)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _tiles(h, th, overlap), _tiles(w, tw, overlap)
    half = overlap // 2
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            sr = model(x[..., y0:y0 + th, x0:x0 + tw])
            # Keep the tile's centre: cut half the overlap on every side that has a neighbour.
            top = 0 if i == 0 else half
            left = 0 if j == 0 else half
            bottom = th if i == len(ys) - 1 else th - half
            right = tw if j == len(xs) - 1 else tw - half
            out[..., (y0 + top) * s:(y0 + bottom) * s, (x0 + left) * s:(x0 + right) * s] = \
                sr[..., top * s:bottom * s, left * s:right * s]
    return out


def upscale_image(model: SRModel, lr: np.ndarray, device: torch.device | str = "cpu", tile: int | None = None,
                  overlap: int = 16) -> np.ndarray:
    """Super-resolve an HxWx3 uint8 image to uint8."""
    return to_uint8(upscale_tensor(model, to_tensor(lr, device), tile, overlap))
