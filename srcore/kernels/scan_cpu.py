"""Fused numba kernels for the selective-scan recurrence on CPU (forward and backward).

Per row r = b * D + d (batch b, channel d, group g = d // (D / G)) and step t::

    h_t = exp(delta_t * A_d) * h_{t-1} + delta_t * u_t * B_t      (N-wide)
    y_t = <C_t, h_t>

One pass reads u, delta (R, L) and B, C (Bt, G, L, N) once and computes the decay and input
terms inline, so no (rows, L, N) tensor is ever formed. The state lives in a small float64
array per row (exact to the output dtype's rounding over long sequences); the exponential is
``fast_exp`` so the loop over the N states vectorises.

Work is split into one static block of rows per thread (``prange`` over the blocks) and walked
chunk by chunk along L, so the B and C chunk a thread reads stays in cache for all its rows.
The forward stores the state at each chunk start (n_chunks, R, N); the backward walks the chunks
in reverse, recomputes the states of one chunk per row into a local buffer, and forms every
gradient in that same pass. Memory beyond the inputs and outputs: O(R * N * L / chunk).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from srcore.kernels.exp_cpu import fast_exp

__all__ = ["scan_forward", "scan_backward"]

# reassoc lets LLVM vectorise the <C_t, h_t> and gradient sums over N; fast_exp is compiled
# with strict flags of its own, so its range reduction is not reassociated.
_FLAGS = {"reassoc", "contract"}


@nb.njit(inline="always")
def _row_block(part: int, n_parts: int, rows: int) -> tuple[int, int]:  # pragma: no cover - compiled
    return part * rows // n_parts, (part + 1) * rows // n_parts


@nb.njit(inline="always")
def _row_coords(r: int, dim: int, per_group: int) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """Batch, channel and group of row r = b * D + d."""
    return r // dim, r % dim, (r % dim) // per_group


@nb.njit(parallel=True, cache=True, fastmath=_FLAGS)
def scan_forward(u: np.ndarray, delta: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, chunk: int,
                 n_parts: int, y: np.ndarray, last: np.ndarray,
                 starts: np.ndarray) -> None:  # pragma: no cover - compiled
    """Forward over the whole sequence.

    u, delta: (R, L); a: (D, N); b, c: (Bt, G, L, N); chunk: steps per chunk; n_parts: blocks of
    rows run in parallel (the thread count; read by the caller, as reading it here would keep
    numba from caching the kernel). Outputs, written
    in place: y (R, L); last (R, N) float64, must hold zeros on entry (the initial state) and holds
    h_L on exit; starts (n_chunks, R, N) float64, the state before each chunk.
    """
    rows, length = u.shape
    dim, n_state = a.shape
    per_group = dim // b.shape[1]
    n_chunks = starts.shape[0]
    for part in nb.prange(n_parts):
        r0, r1 = _row_block(part, n_parts, rows)
        h = np.empty(n_state, dtype=np.float64)
        for ci in range(n_chunks):
            s = ci * chunk
            e = min(s + chunk, length)
            for r in range(r0, r1):
                bi, di, gi = _row_coords(r, dim, per_group)
                for n in range(n_state):
                    h[n] = last[r, n]
                    starts[ci, r, n] = h[n]
                for t in range(s, e):
                    dt = delta[r, t]
                    du = dt * u[r, t]
                    acc = 0.0
                    for n in range(n_state):
                        hn = fast_exp(dt * a[di, n]) * h[n] + du * b[bi, gi, t, n]
                        h[n] = hn
                        acc += hn * c[bi, gi, t, n]
                    y[r, t] = acc
                for n in range(n_state):
                    last[r, n] = h[n]


@nb.njit(parallel=True, cache=True, fastmath=_FLAGS)
def scan_backward(u: np.ndarray, delta: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, chunk: int,
                  starts: np.ndarray, dy: np.ndarray, carry: np.ndarray, d_u: np.ndarray, d_delta: np.ndarray,
                  d_a_rows: np.ndarray, d_b_parts: np.ndarray,
                  d_c_parts: np.ndarray) -> None:  # pragma: no cover - compiled
    """Backward of ``scan_forward`` with every gradient formed in one reverse pass.

    Inputs as in the forward, plus starts (from the forward), dy (R, L) and carry (R, N) float64
    holding dL/dh_L on entry (overwritten). Outputs, written in place: d_u, d_delta (R, L);
    d_a_rows (R, N) float64, zero on entry, summed over the batch by the caller; d_b_parts,
    d_c_parts (n_parts, Bt, G, L, N) float64, zero on entry, one slab per thread block (rows of a
    group may sit in different blocks) that the caller sums over the first axis.
    """
    rows, length = u.shape
    dim, n_state = a.shape
    per_group = dim // b.shape[1]
    n_chunks = starts.shape[0]
    n_parts = d_b_parts.shape[0]
    for part in nb.prange(n_parts):
        r0, r1 = _row_block(part, n_parts, rows)
        hs = np.empty((chunk + 1, n_state), dtype=np.float64)  # states h_{s-1} .. h_{e-1}
        decay = np.empty((chunk, n_state), dtype=a.dtype)
        g = np.empty(n_state, dtype=np.float64)
        d_a_acc = np.empty(n_state, dtype=np.float64)
        for ci in range(n_chunks - 1, -1, -1):
            s = ci * chunk
            e = min(s + chunk, length)
            for r in range(r0, r1):
                bi, di, gi = _row_coords(r, dim, per_group)
                for n in range(n_state):
                    hs[0, n] = starts[ci, r, n]
                    g[n] = carry[r, n]
                    d_a_acc[n] = 0.0
                for t in range(s, e):
                    k = t - s
                    dt = delta[r, t]
                    du = dt * u[r, t]
                    for n in range(n_state):
                        da = fast_exp(dt * a[di, n])
                        decay[k, n] = da
                        hs[k + 1, n] = da * hs[k, n] + du * b[bi, gi, t, n]
                for t in range(e - 1, s - 1, -1):
                    k = t - s
                    dyt = dy[r, t]
                    dt = delta[r, t]
                    ut = u[r, t]
                    acc_log = 0.0
                    acc_b = 0.0
                    for n in range(n_state):
                        gt = dyt * c[bi, gi, t, n] + g[n]  # dL/dh_t
                        d_c_parts[part, bi, gi, t, n] += dyt * hs[k + 1, n]
                        dlog = gt * hs[k, n] * decay[k, n]  # d/d(delta A) of exp(delta A) h_{t-1}
                        acc_log += dlog * a[di, n]
                        d_a_acc[n] += dlog * dt
                        acc_b += gt * b[bi, gi, t, n]
                        d_b_parts[part, bi, gi, t, n] += gt * dt * ut
                        g[n] = decay[k, n] * gt
                    d_delta[r, t] = acc_log + acc_b * ut
                    d_u[r, t] = acc_b * dt
                for n in range(n_state):
                    carry[r, n] = g[n]
                    d_a_rows[r, n] += d_a_acc[n]
