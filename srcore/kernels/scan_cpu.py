"""Numba kernels for the selective-scan recurrence on CPU.

The recurrence ``h_t = a_t * h_{t-1} + b_t`` is inherently sequential in t, so we run it as
tight compiled loops parallelised over the (batch, channel) rows, on one chunk of the
sequence at a time. The exponentials and products that build ``a_t`` and ``b_t`` are done by
torch outside these loops (vectorised), so the kernels only do fused multiply-adds; state is
accumulated in float64 so long sequences stay exact to the output dtype's rounding.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["scan_forward_chunk", "scan_backward_chunk"]


@nb.njit(parallel=True, cache=True, fastmath=False)
def scan_forward_chunk(da: np.ndarray, db: np.ndarray, c: np.ndarray, group_of: np.ndarray,
                       h: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """One chunk forward.

    da, db: (R, T, N) decay and input terms per row r = b * D + d; c: (Bt, G, T, N);
    group_of: (R, 2) = (batch index, group index) of each row; h: (R, N) float64 state,
    updated in place; y: (R, T) output.
    """
    rows, steps, n_state = da.shape
    for r in nb.prange(rows):
        bi = group_of[r, 0]
        gi = group_of[r, 1]
        for t in range(steps):
            acc = 0.0
            for n in range(n_state):
                hn = da[r, t, n] * h[r, n] + db[r, t, n]
                h[r, n] = hn
                acc += hn * c[bi, gi, t, n]
            y[r, t] = acc


@nb.njit(parallel=True, cache=True, fastmath=False)
def scan_backward_chunk(da: np.ndarray, db: np.ndarray, c: np.ndarray, group_of: np.ndarray,
                        h0: np.ndarray, dy: np.ndarray, g_next: np.ndarray,
                        h_prev: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover - compiled
    """One chunk backward.

    Recomputes the chunk's states from its start state ``h0`` (R, N) and writes
    ``h_prev[r, t] = h_{t-1}`` and ``g[r, t] = dL/dh_t`` (both (R, T, N)); ``g_next`` (R, N)
    holds ``a_T * dL/dh_T`` from the following chunk on entry and the value to hand to the
    previous chunk on exit.
    """
    rows, steps, n_state = da.shape
    for r in nb.prange(rows):
        bi = group_of[r, 0]
        gi = group_of[r, 1]
        hn = np.empty(n_state, dtype=np.float64)
        carry = np.empty(n_state, dtype=np.float64)
        for n in range(n_state):
            hn[n] = h0[r, n]
            carry[n] = g_next[r, n]
        for t in range(steps):
            for n in range(n_state):
                h_prev[r, t, n] = hn[n]
                hn[n] = da[r, t, n] * hn[n] + db[r, t, n]
        for t in range(steps - 1, -1, -1):
            dyt = dy[r, t]
            for n in range(n_state):
                gt = dyt * c[bi, gi, t, n] + carry[n]
                g[r, t, n] = gt
                carry[n] = da[r, t, n] * gt
        for n in range(n_state):
            g_next[r, n] = carry[n]
