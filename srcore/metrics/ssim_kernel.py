"""Numba kernel for the mean SSIM of two float64 maps (separable Gaussian window, valid region).

Contract: ``ssim_mean(x, y, g, c1, c2)`` with ``x``, ``y`` C-contiguous float64 (H, W), ``g`` the
1-D window (K,) whose outer product is the 2-D window, H, W >= K. Returns the mean of the SSIM map
over the (H-K+1, W-K+1) valid region, all in float64.

Why hand-written: the 2-D window is separable, so each output row needs one vertical pass over K
input rows (vectorised along the row) and one K-tap horizontal pass, fused with the SSIM formula
while the row is in cache. Four moments are filtered (x, y, x^2 + y^2, xy): the denominator only
needs var_x + var_y. A vectorised numpy/torch version spends its time moving full-size temporaries
through memory, and torch's float64 conv2d takes a slow generic path on CPU; OpenCV would add a
heavy dependency for one filter. Single-threaded on purpose: evaluation parallelises over images.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["ssim_mean"]


@nb.njit(cache=True)
def ssim_mean(x: np.ndarray, y: np.ndarray, g: np.ndarray, c1: float,
              c2: float) -> float:  # pragma: no cover - compiled
    h, w = x.shape
    k = g.shape[0]
    ho, wo = h - k + 1, w - k + 1
    vx, vy, vs, vxy = np.empty(w), np.empty(w), np.empty(w), np.empty(w)
    mx, my, ms, mxy = np.empty(wo), np.empty(wo), np.empty(wo), np.empty(wo)
    total = 0.0
    for i in range(ho):
        vx[:] = 0.0
        vy[:] = 0.0
        vs[:] = 0.0
        vxy[:] = 0.0
        for t in range(k):  # vertical pass: K input rows into four row moments
            gt = g[t]
            rx = x[i + t]
            ry = y[i + t]
            for j in range(w):
                a = rx[j]
                b = ry[j]
                vx[j] += gt * a
                vy[j] += gt * b
                vs[j] += gt * (a * a + b * b)
                vxy[j] += gt * (a * b)
        mx[:] = 0.0
        my[:] = 0.0
        ms[:] = 0.0
        mxy[:] = 0.0
        for t in range(k):  # horizontal pass over the row moments
            gt = g[t]
            for j in range(wo):
                mx[j] += gt * vx[j + t]
                my[j] += gt * vy[j + t]
                ms[j] += gt * vs[j + t]
                mxy[j] += gt * vxy[j + t]
        row = 0.0
        for j in range(wo):
            p = mx[j] * my[j]
            q = mx[j] * mx[j] + my[j] * my[j]
            row += (2.0 * p + c1) * (2.0 * (mxy[j] - p) + c2) / ((q + c1) * (ms[j] - q + c2))
        total += row
    return total / (ho * wo)
