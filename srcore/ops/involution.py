"""Involution (Li et al., CVPR 2021): a spatially varying, channel-shared kernel per group.

``involution(x, weight, kernel_size, groups)`` applies per-pixel kernels ``weight`` of shape
(B, groups * k*k, H, W) to ``x`` (B, C, H, W) with stride 1 and same padding. The reference
back-end unfolds the k*k neighbourhoods (memory k*k times the input); the ``shift`` back-end
accumulates one shifted view per tap, which gives the same sums with input-sized memory; the
``triton`` back-end (``srcore.kernels.triton.involution``) does it in one kernel. With no back-end
named, CUDA tensors use triton when it imports, everything else shift.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from srcore.kernels.triton import INSTALL_HINT, interpreted, triton_available

__all__ = ["involution"]


def _involution_unfold(x: torch.Tensor, weight: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=(k - 1) // 2).view(b, groups, c // groups, k * k, h, w)
    return (weight.view(b, groups, 1, k * k, h, w) * cols).sum(dim=3).view(b, c, h, w)


def _involution_shift(x: torch.Tensor, weight: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    pad = (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad)).view(b, groups, c // groups, h + 2 * pad, w + 2 * pad)
    wt = weight.view(b, groups, 1, k * k, h, w)
    out = None
    for i in range(k):
        for j in range(k):
            term = xp[..., i:i + h, j:j + w] * wt[:, :, :, i * k + j]
            out = term if out is None else out + term
    return out.reshape(b, c, h, w)


def _resolve_backend(backend: str | None, x: torch.Tensor) -> str:
    if backend is None:
        return "triton" if x.is_cuda and triton_available() else "shift"
    if backend not in ("shift", "unfold", "triton"):
        raise ValueError(f"involution: unknown backend {backend!r}; use shift, unfold or triton")
    if backend == "triton" and not triton_available():
        raise ValueError(INSTALL_HINT)
    if backend == "triton" and not (x.is_cuda or interpreted()):
        raise ValueError("involution: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return backend


def involution(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, groups: int,
               backend: Literal["shift", "unfold", "triton"] | None = None) -> torch.Tensor:
    """Apply per-pixel kernels (stride 1, same padding); see the module docstring."""
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"involution: channels {c} not divisible by groups {groups}")
    if weight.shape != (b, groups * kernel_size * kernel_size, h, w):
        raise ValueError(f"involution: weight must be {(b, groups * kernel_size**2, h, w)}, "
                         f"got {tuple(weight.shape)}")
    name = _resolve_backend(backend, x)
    if name == "triton":
        from srcore.kernels.triton.involution import involution_triton

        return involution_triton(x, weight, kernel_size, groups)
    fn = _involution_unfold if name == "unfold" else _involution_shift
    return fn(x, weight, kernel_size, groups)
