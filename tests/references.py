"""Independent, deliberately plain float64 implementations used as truth by tests and benches."""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _contributions(in_len: int, out_len: int, scale: float) -> list[list[tuple[int, float]]]:
    """Per output pixel, (source index, weight) pairs exactly as MATLAB's imresize computes them."""
    width = 4.0 / scale if scale < 1 else 4.0
    rows = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = []
        for j in range(left, left + int(math.ceil(width)) + 2):
            d = u - j
            w = scale * _cubic(scale * d) if scale < 1 else _cubic(d)
            # symmetric padding
            k = j - 1
            while k < 0 or k >= in_len:
                k = -k - 1 if k < 0 else 2 * in_len - k - 1
            taps.append((k, w))
        total = sum(w for _, w in taps)
        rows.append([(k, w / total) for k, w in taps if w != 0])
    return rows


def matlab_imresize_numpy(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize(img, scale, 'bicubic') for HxWxC float64 arrays, one output row at a time."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]
    oh, ow = int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9))
    rows = _contributions(h, oh, scale)
    tmp = np.empty((oh, w) + img.shape[2:])
    for i, taps in enumerate(rows):
        tmp[i] = sum(wt * img[k] for k, wt in taps)
    cols = _contributions(w, ow, scale)
    out = np.empty((oh, ow) + img.shape[2:])
    for j, taps in enumerate(cols):
        out[:, j] = sum(wt * tmp[:, k] for k, wt in taps)
    return out


def matlab_round_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)
