"""Nested S-shaped scan (NSS) orders of MaIR as cached index permutations.

A scan order is a permutation ``order`` of the row-major positions of an HxW map: sequence
element i is map position ``order[i]``; ``inverse = argsort(order)`` scatters a sequence back.
The four MaIR sequences are the stripe scan of the map, of the map rotated by 180 degrees, of
the transposed map, and of the transposed rotated map. Orders are computed once per
(H, W, stripe, shift) with numpy and cached, so a forward pass only does gathers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["nss_indices", "nss_orders", "stripe_scan", "stripe_widths"]


def stripe_widths(width: int, stripe: int, shift: bool) -> list[int]:
    """Widths of the vertical stripes: an optional half stripe, full stripes, then the remainder."""
    if stripe < 1:
        raise ValueError(f"stripe width must be positive, got {stripe}")
    widths = []
    rest = width
    if shift and stripe > 1:
        first = min(stripe // 2, rest)
        widths.append(first)
        rest -= first
    while rest >= stripe:
        widths.append(stripe)
        rest -= stripe
    if rest:
        widths.append(rest)
    return widths


def stripe_scan(height: int, width: int, stripe: int, shift: bool = False) -> np.ndarray:
    """Sequence 0: stripes left to right, alternately top-down and bottom-up, rows snaking inside."""
    index = np.arange(height * width).reshape(height, width)
    parts, x0 = [], 0
    for s, w in enumerate(stripe_widths(width, stripe, shift)):
        block = index[:, x0:x0 + w]
        if s % 2:
            block = block[::-1]
        rows = block.copy()
        rows[1::2] = rows[1::2, ::-1]  # the 2nd, 4th, ... visited rows go right to left
        parts.append(rows.reshape(-1))
        x0 += w
    return np.concatenate(parts)


@lru_cache(maxsize=128)
def nss_orders(height: int, width: int, stripe: int, shift: bool = False) -> np.ndarray:
    """The four sequences' orders as a (4, H*W) int64 array of row-major positions."""
    index = np.arange(height * width).reshape(height, width)
    views = [index, index[::-1, ::-1], index.T, index[::-1, ::-1].T]
    orders = []
    for view in views:
        h, w = view.shape
        orders.append(view.reshape(-1)[stripe_scan(h, w, stripe, shift)])
    return np.stack(orders)


@lru_cache(maxsize=128)
def _indices_cpu(height: int, width: int, stripe: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.from_numpy(nss_orders(height, width, stripe, shift))
    return order, torch.argsort(order, dim=1)


def nss_indices(height: int, width: int, stripe: int, shift: bool, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse), each (4, H*W) int64 on ``device``."""
    order, inverse = _indices_cpu(height, width, stripe, shift)
    return order.to(device), inverse.to(device)
