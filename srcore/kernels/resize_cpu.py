"""Numba kernel for one separable resize pass on CPU.

Each output sample is a short weighted sum of input samples along one axis. Computing it in
one fused loop (all taps of an output row while they are in cache, accumulated in float64)
avoids the per-tap full-array passes that bound a vectorised torch/numpy version by memory
bandwidth. With ``quantize`` the result is rounded like MATLAB's uint8 conversion (halves away
from zero, clamped to [0, 255]) as it is stored, so a final pass can write uint8 directly.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["resize_axis1"]


@nb.njit(inline="always")
def _q(v: float, quantize: bool) -> float:  # pragma: no cover - compiled
    if quantize:
        v = math.floor(v + 0.5)
        return min(max(v, 0.0), 255.0)
    return v


@nb.njit(parallel=True, cache=True)
def resize_axis1(x: np.ndarray, idx: np.ndarray, w: np.ndarray, out: np.ndarray,
                 quantize: bool) -> None:  # pragma: no cover - compiled
    """out[a, i, b] = sum_k w[i, k] * x[a, idx[i, k], b] for x (A, L, B), out (A, O, B)."""
    n_a, n_out, n_b = out.shape
    taps = idx.shape[1]
    if n_b >= 16:
        # Wide rows: accumulate whole rows (vectorises over b).
        for t in nb.prange(n_a * n_out):
            a = t // n_out
            i = t % n_out
            row = np.empty(n_b, dtype=np.float64)
            src0 = x[a, idx[i, 0]]
            w0 = w[i, 0]
            for b in range(n_b):
                row[b] = w0 * src0[b]
            for k in range(1, taps):
                wk = w[i, k]
                src = x[a, idx[i, k]]
                for b in range(n_b):
                    row[b] += wk * src[b]
            dst = out[a, i]
            for b in range(n_b):
                dst[b] = _q(row[b], quantize)
    elif n_b == 3:
        # The W axis of an HxWx3 image: three scalar accumulators per output pixel.
        for a in nb.prange(n_a):
            xa = x[a]
            oa = out[a]
            for i in range(n_out):
                acc0 = 0.0
                acc1 = 0.0
                acc2 = 0.0
                for k in range(taps):
                    wk = w[i, k]
                    s = idx[i, k]
                    acc0 += wk * xa[s, 0]
                    acc1 += wk * xa[s, 1]
                    acc2 += wk * xa[s, 2]
                oa[i, 0] = _q(acc0, quantize)
                oa[i, 1] = _q(acc1, quantize)
                oa[i, 2] = _q(acc2, quantize)
    else:
        # Other narrow rows: scalar accumulators per output sample.
        for a in nb.prange(n_a):
            for i in range(n_out):
                for b in range(n_b):
                    acc = 0.0
                    for k in range(taps):
                        acc += w[i, k] * x[a, idx[i, k], b]
                    out[a, i, b] = _q(acc, quantize)
