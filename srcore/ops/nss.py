"""Nested S-shaped scan (NSS) orders of MaIR as cached index permutations.

A scan order is a permutation ``order`` of the row-major positions of an HxW map: sequence
element i is map position ``order[i]``; ``inverse = argsort(order)`` scatters a sequence back.
The four MaIR sequences are the stripe scan of the map, of the map rotated by 180 degrees, of
the transposed map, and of the transposed rotated map. Orders are computed once per
(H, W, stripe, shift) and cached, so a forward pass only does gathers.

``nss_ranks`` computes the orders in closed form from H and W with tensor ops (a TorchScript
function): traced into an exported graph, it gives the orders of whatever size the graph is fed.
``stripe_scan`` walks the stripes literally, as the paper describes them; the tests hold the
closed form to it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["nss_indices", "nss_indices_of", "nss_orders", "nss_ranks", "stripe_scan", "stripe_widths"]


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


@torch.jit.script
def _stripe_rank(height: torch.Tensor, width: torch.Tensor, stripe: int, shift: bool) -> torch.Tensor:
    """Sequence-0 step of each row-major position of an HxW map (the inverse of ``stripe_scan``).

    Stripe s starts at column x0 and is ws wide; all earlier stripes hold H * x0 positions. It is
    walked top-down when s is even (bottom-up when odd), and each visited row r left to right when
    r is even (right to left when odd)."""
    first = torch.clamp(width, max=stripe // 2) if shift and stripe > 1 else width * 0
    x = torch.arange(width)
    y = torch.arange(height)
    late = x >= first  # columns after the half stripe (all of them without a shift)
    index = torch.div(x - first, stripe, rounding_mode="floor")
    s = torch.where(late, index + (first > 0).long(), torch.zeros_like(x))
    x0 = torch.where(late, first + index * stripe, torch.zeros_like(x))
    ws = torch.where(late, torch.clamp(width - x0, max=stripe), first.expand(x.shape))
    down = (s % 2 == 0)[None, :]
    r = torch.where(down, y[:, None], height - 1 - y[:, None])  # (H, W)
    col = (x - x0)[None, :]
    col = torch.where(r % 2 == 0, col, ws[None, :] - 1 - col)
    return (height * x0[None, :] + r * ws[None, :] + col).reshape(-1)


@torch.jit.script
def nss_ranks(height: torch.Tensor, width: torch.Tensor, stripe: int, shift: bool) -> torch.Tensor:
    """(4, H*W) int64: the step at which each of the four sequences visits each row-major position
    (``inverse`` of ``nss_indices``). H and W are 0-d int64 tensors so that a trace keeps them dynamic."""
    rank = _stripe_rank(height, width, stripe, shift)
    # The transposed map (W x H): its position (x, y) is ours (y, x).
    rank_t = _stripe_rank(width, height, stripe, shift).reshape(width, height).t().reshape(-1)
    # A 180-degree rotation visits position p where the unrotated scan visits L - 1 - p.
    return torch.stack([rank, rank.flip(0), rank_t, rank_t.flip(0)])


@lru_cache(maxsize=128)
def nss_orders(height: int, width: int, stripe: int, shift: bool = False) -> np.ndarray:
    """The four sequences' orders as a (4, H*W) int64 array of row-major positions."""
    return _indices_cpu(height, width, stripe, shift)[0].numpy()


@lru_cache(maxsize=128)
def _indices_cpu(height: int, width: int, stripe: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = nss_ranks(torch.tensor(height), torch.tensor(width), stripe, shift)
    return torch.argsort(inverse, dim=1), inverse


def nss_indices(height: int, width: int, stripe: int, shift: bool, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse), each (4, H*W) int64 on ``device``."""
    order, inverse = _indices_cpu(height, width, stripe, shift)
    return order.to(device), inverse.to(device)


@torch.jit.script
def nss_indices_of(x: torch.Tensor, stripe: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse) for a map whose last two dims are H and W, computed from its shape inside the
    graph: what a traced (exported) model uses, so that the orders follow the input size. Not cached."""
    inverse = nss_ranks(torch.tensor(x.shape[-2]), torch.tensor(x.shape[-1]), stripe, shift)
    return torch.argsort(inverse, dim=1), inverse
