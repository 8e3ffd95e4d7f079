"""MATLAB-compatible ``imresize(..., 'bicubic')`` for torch tensors and numpy arrays.

The SR literature generates LR images with MATLAB's bicubic kernel (a = -0.5) with
antialiasing when downscaling and symmetric padding at the borders. Published PSNR tables
depend on these exact weights, so this module reproduces MATLAB's index/weight computation
and applies it as a small number of strided gathers (one per kernel tap) along each axis,
which is exact, batched, and works on any device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["imresize", "imresize_np", "resize_weights"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


@lru_cache(maxsize=256)
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``contributions``: (out_len, taps) zero-based source indices and float64 weights.

    Mirrors MATLAB exactly: 1-based output coordinates mapped back with a half-pixel offset,
    a kernel widened by 1/scale when antialiasing a downscale, weights normalised per row,
    symmetric index mirroring, and removal of all-zero tap columns.
    """
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - indices
    if scale < 1 and antialias:
        weights = scale * _cubic(dist * scale)
    else:
        weights = _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric boundary: 1..n, n..1 repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return np.ascontiguousarray(idx[:, keep]), np.ascontiguousarray(weights[:, keep])


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    idx_np, w_np = resize_weights(x.shape[dim], out_len, scale, antialias)
    idx = torch.from_numpy(idx_np).to(x.device)
    w = torch.from_numpy(w_np).to(device=x.device, dtype=x.dtype)
    shape = [1] * x.ndim
    shape[dim] = out_len
    out = None
    # One gather per tap keeps memory at the output size (a dense matrix or a full
    # (out, taps, ...) gather would cost 4/scale times more for antialiased downscales).
    for k in range(idx.shape[1]):
        term = x.index_select(dim, idx[:, k]) * w[:, k].view(shape)
        out = term if out is None else out.add_(term)
    return out


def _output_size(in_hw: tuple[int, int], scale: float | tuple[float, float] | None,
                 size: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[float, float]]:
    if size is not None:
        out_hw = (int(size[0]), int(size[1]))
        if min(out_hw) < 1:
            raise ValueError(f"imresize: output size must be positive, got {size}")
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]) if scale is None else (
            (scale, scale) if not isinstance(scale, tuple) else scale)
        return out_hw, (float(scales[0]), float(scales[1]))
    if scale is None:
        raise ValueError("imresize: give either scale or size")
    sh, sw = (scale, scale) if not isinstance(scale, tuple) else scale
    if sh <= 0 or sw <= 0:
        raise ValueError(f"imresize: scale must be positive, got {scale}")
    # MATLAB takes ceil(scale * size); the tolerance keeps 1/3 * 255 at 85, not 86.
    out_hw = (int(math.ceil(in_hw[0] * sh - 1e-9)), int(math.ceil(in_hw[1] * sw - 1e-9)))
    return out_hw, (float(sh), float(sw))


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None,
             size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """Resize the last two axes of ``x`` (…, H, W) like MATLAB ``imresize(x, scale, 'bicubic')``.

    ``x`` must be floating point (float32 or float64; values are not clamped or rounded).
    Give ``scale`` (output/input, e.g. 1/4 to downscale by four) or an output ``size``.
    Like MATLAB, the axis with the smaller scale factor is resized first.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"imresize expects a float tensor, got {x.dtype}; convert with .double() or .float()")
    if x.ndim < 2:
        raise ValueError(f"imresize expects (..., H, W), got shape {tuple(x.shape)}")
    in_hw = (x.shape[-2], x.shape[-1])
    out_hw, scales = _output_size(in_hw, scale, size)
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        dim = x.ndim - 2 + axis
        x = _resize_dim(x, dim, out_hw[axis], scales[axis], antialias)
    return x


def imresize_np(img: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None,
                antialias: bool = True) -> np.ndarray:
    """Numpy convenience wrapper for HxW or HxWxC images.

    uint8 input is resized in float64 and rounded back to uint8 (MATLAB's behaviour);
    float input keeps its dtype and is not clamped.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize_np expects HxW or HxWxC, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    t = torch.from_numpy(np.ascontiguousarray(img))
    t = t.double() if is_uint8 or img.dtype == np.float64 else t.float()
    chw = t.permute(2, 0, 1) if img.ndim == 3 else t
    out = imresize(chw, scale=scale, size=size, antialias=antialias)
    out = out.permute(1, 2, 0) if img.ndim == 3 else out
    if is_uint8:
        # MATLAB's uint8 conversion rounds halves away from zero.
        return (out + 0.5).floor_().clamp_(0, 255).to(torch.uint8).numpy()
    return out.numpy().astype(img.dtype, copy=False)
