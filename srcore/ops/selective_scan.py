"""Selective scan (the S6 recurrence of Mamba) with interchangeable back-ends.

``selective_scan`` follows mamba-ssm's ``selective_scan_fn`` semantics::

    delta = softplus(delta + delta_bias)             (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t   = <C_t, h_t> + D * u_t ;  y = y * silu(z)  (D and z optional)

Shapes: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L); D, delta_bias (D,).

Back-ends:
- ``reference``: a plain sequential loop in torch; the truth the tests compare against.
- ``cpu``: chunked numba kernels with a hand-written backward (the default on CPU); memory
  O(B*D*L) plus one bounded chunk, state accumulated in float64.
- ``torch``: a blocked closed form in pure torch (any device; used on CUDA without mamba-ssm).
- ``cuda``: mamba-ssm's fused kernel when it is importable and the inputs are on CUDA.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "SCAN_OP",
    "available_backends",
    "scan_backend",
    "scan_flops",
    "selective_scan",
    "selective_scan_reference",
]

Backend = Literal["reference", "cpu", "torch", "cuda"]
_BACKENDS = ("reference", "cpu", "torch", "cuda")

# Elements per chunk tensor (R x T x N) in the cpu back-end: large enough to amortise the
# Python loop over chunks, small enough to stay in cache-friendly, bounded memory.
_CHUNK_ELEMENTS = 1 << 20


def scan_flops(batch: int, length: int, channels: int, state: int) -> int:
    """FLOPs of one selective scan as the efficiency tables count them: 9 * B * L * D * N."""
    return 9 * batch * length * channels * state


def _mamba_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Back-ends usable for tensors on ``device`` in this environment."""
    backends = ["reference", "cpu", "torch"]
    if torch.device(device).type == "cuda" and _mamba_available():
        backends.append("cuda")
    return backends


# --------------------------------------------------------------------------------------------
# Reference


def _scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential recurrence; B, C are (B, G, N, L). Returns y (B, D, L) and h_L (B, D, N)."""
    bsz, dim, length = u.shape
    groups = B.shape[1]
    # unbind once: indexing step t inside the loop would make autograd scatter a full-size
    # gradient per step (quadratic in L).
    us, deltas = u.unbind(-1), delta.unbind(-1)
    Bs = B.repeat_interleave(dim // groups, dim=1).unbind(-1)  # L x (B, D, N)
    Cs = C.repeat_interleave(dim // groups, dim=1).unbind(-1)
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = deltas[t][..., None]
        h = torch.exp(dt * A) * h + dt * Bs[t] * us[t][..., None]
        ys.append((h * Cs[t]).sum(-1))
    return torch.stack(ys, dim=-1), h


# --------------------------------------------------------------------------------------------
# Blocked closed form in pure torch


def _scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form per block of ``block`` steps; the block-internal decays are summed as
    masked segment sums (never as differences of cumulative sums) so they stay exact."""
    bsz, dim, length = u.shape
    groups = B.shape[1]
    rep = dim // groups
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    for s in range(0, length, block):
        e = min(s + block, length)
        t_len = e - s
        dt = delta[:, :, s:e]
        log_a = dt[..., None] * A[None, :, None, :]  # (B, D, T, N)
        Bc = B[..., s:e].transpose(-1, -2).repeat_interleave(rep, dim=1)  # (B, D, T, N)
        Cc = C[..., s:e].transpose(-1, -2).repeat_interleave(rep, dim=1)
        x = dt * u[:, :, s:e]
        # seg[t, s] = sum_{k=s+1..t} log_a_k for s <= t, -inf above the diagonal.
        tri = torch.ones(t_len, t_len, dtype=torch.bool, device=u.device).tril(-1)
        expanded = log_a[:, :, :, None, :].expand(bsz, dim, t_len, t_len, -1)
        seg = torch.where(tri[None, None, :, :, None], expanded, 0).cumsum(dim=2)
        keep = torch.ones(t_len, t_len, dtype=torch.bool, device=u.device).tril()
        w = torch.exp(seg).masked_fill(~keep[None, None, :, :, None], 0)  # (B, D, t, s, N)
        y_intra = torch.einsum("bdtn,bdtsn,bdsn,bds->bdt", Cc, w, Bc, x)
        decay_from_start = torch.exp(log_a.cumsum(dim=2))  # (B, D, T, N)
        y_carry = torch.einsum("bdtn,bdtn,bdn->bdt", Cc, decay_from_start, h)
        ys.append(y_intra + y_carry)
        # State at the block end: decay of h plus each input decayed to the end (row t = T-1 of w).
        h = decay_from_start[:, :, -1] * h + torch.einsum("bdsn,bdsn,bds->bdn", w[:, :, -1], Bc, x)
    return torch.cat(ys, dim=-1), h


# --------------------------------------------------------------------------------------------
# Chunked numba back-end (custom op with its own backward)


def _chunk_len(rows: int, state: int, length: int) -> int:
    return max(16, min(length, _CHUNK_ELEMENTS // max(1, rows * state)))


def _rows_index(bsz: int, dim: int, groups: int) -> np.ndarray:
    rows = np.arange(bsz * dim)
    return np.stack([rows // dim, (rows % dim) // (dim // groups)], axis=1).astype(np.int64)


def _chunk_terms(u, delta, A, B, s, e):
    """Decay a_t = exp(delta A) and input b_t = delta u B for steps s..e as (R, T, N)."""
    bsz, dim, _ = u.shape
    groups = B.shape[1]
    dt = delta[:, :, s:e]
    da = torch.exp(dt[..., None] * A[None, :, None, :])  # (B, D, T, N)
    bt = B[..., s:e].transpose(-1, -2)  # (B, G, T, N)
    du = (dt * u[:, :, s:e]).view(bsz, groups, dim // groups, e - s, 1)
    db = du * bt[:, :, None]  # (B, G, D/G, T, N)
    return da.reshape(bsz * dim, e - s, -1), db.reshape(bsz * dim, e - s, -1)


@torch.library.custom_op("srcore::selective_scan_cpu", mutates_args=())
def _scan_cpu_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from srcore.kernels.scan_cpu import scan_forward_chunk

    bsz, dim, length = u.shape
    state = A.shape[1]
    rows = bsz * dim
    chunk = _chunk_len(rows, state, length)
    n_chunks = (length + chunk - 1) // chunk
    group_of = _rows_index(bsz, dim, B.shape[1])
    c_all = C.transpose(-1, -2).contiguous()  # (B, G, L, N)
    h = np.zeros((rows, state), dtype=np.float64)
    starts = torch.empty(n_chunks, rows, state, dtype=torch.float64)
    y = torch.empty(rows, length, dtype=u.dtype)
    y_np = y.numpy()
    for i in range(n_chunks):
        s, e = i * chunk, min((i + 1) * chunk, length)
        starts[i] = torch.from_numpy(h)
        da, db = _chunk_terms(u, delta, A, B, s, e)
        y_chunk = np.empty((rows, e - s), dtype=y_np.dtype)
        scan_forward_chunk(da.contiguous().numpy(), db.contiguous().numpy(),
                           c_all[:, :, s:e].contiguous().numpy(), group_of, h, y_chunk)
        y_np[:, s:e] = y_chunk
    last = torch.from_numpy(h).to(u.dtype).view(bsz, dim, state)
    return y.view(bsz, dim, length), last, starts


@_scan_cpu_op.register_fake
def _(u, delta, A, B, C):
    bsz, dim, length = u.shape
    state = A.shape[1]
    n_chunks = -(-length // _chunk_len(bsz * dim, state, length))
    return (u.new_empty(bsz, dim, length), u.new_empty(bsz, dim, state),
            u.new_empty(n_chunks, bsz * dim, state, dtype=torch.float64))


def _scan_cpu_setup(ctx, inputs, output):
    u, delta, A, B, C = inputs
    ctx.save_for_backward(u, delta, A, B, C, output[2])
    ctx.mark_non_differentiable(output[2])


def _scan_cpu_backward(ctx, dy, dlast, _dstarts):
    from srcore.kernels.scan_cpu import scan_backward_chunk

    u, delta, A, B, C, starts = ctx.saved_tensors
    bsz, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    rows = bsz * dim
    chunk = _chunk_len(rows, state, length)
    group_of = _rows_index(bsz, dim, groups)
    np_dtype = np.float64 if u.dtype == torch.float64 else np.float32
    dy = (torch.zeros_like(u) if dy is None else dy).contiguous().view(rows, length).numpy()
    g_next = np.zeros((rows, state)) if dlast is None else dlast.reshape(rows, state).double().numpy().copy()
    c_all, b_all = C.transpose(-1, -2).contiguous(), B.transpose(-1, -2).contiguous()  # (B, G, L, N)
    u_rows, delta_rows = u.reshape(rows, length).numpy(), delta.reshape(rows, length).numpy()
    d_delta = np.empty((rows, length), dtype=np_dtype)
    d_u = np.empty((rows, length), dtype=np_dtype)
    d_a_rows = np.zeros((rows, state), dtype=np.float64)
    d_b = torch.empty(bsz, groups, length, state, dtype=u.dtype)
    d_c = torch.empty(bsz, groups, length, state, dtype=u.dtype)
    a_np = A.numpy()
    for i in range(starts.shape[0] - 1, -1, -1):
        s, e = i * chunk, min((i + 1) * chunk, length)
        da, db = _chunk_terms(u, delta, A, B, s, e)
        db_rows = np.empty((rows, e - s, state), dtype=np_dtype)
        dc_rows = np.empty((rows, e - s, state), dtype=np_dtype)
        dd_chunk = np.empty((rows, e - s), dtype=np_dtype)
        du_chunk = np.empty((rows, e - s), dtype=np_dtype)
        scan_backward_chunk(da.contiguous().numpy(), db.contiguous().numpy(), c_all[:, :, s:e].contiguous().numpy(),
                            b_all[:, :, s:e].contiguous().numpy(), group_of, a_np,
                            np.ascontiguousarray(delta_rows[:, s:e]), np.ascontiguousarray(u_rows[:, s:e]),
                            starts[i].numpy(), np.ascontiguousarray(dy[:, s:e]), g_next,
                            dd_chunk, du_chunk, d_a_rows, db_rows, dc_rows)
        d_delta[:, s:e], d_u[:, s:e] = dd_chunk, du_chunk
        per_group = (bsz, groups, dim // groups, e - s, state)
        d_b[:, :, s:e] = torch.from_numpy(db_rows).view(per_group).sum(2)
        d_c[:, :, s:e] = torch.from_numpy(dc_rows).view(per_group).sum(2)
    d_a = torch.from_numpy(d_a_rows).view(bsz, dim, state).sum(0).to(A.dtype)
    return (torch.from_numpy(d_u).view_as(u), torch.from_numpy(d_delta).view_as(delta), d_a,
            d_b.transpose(-1, -2).contiguous(), d_c.transpose(-1, -2).contiguous())


_scan_cpu_op.register_autograd(_scan_cpu_backward, setup_context=_scan_cpu_setup)

SCAN_OP = torch.ops.srcore.selective_scan_cpu.default


def _scan_cpu(u, delta, A, B, C):
    y, last, _ = _scan_cpu_op(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(),
                              C.contiguous())
    return y, last


# --------------------------------------------------------------------------------------------
# Public entry point


# The back-end a call with ``backend=None`` uses; None means "chosen by device". A context variable
# (not a module global) so that threads and tasks each see their own setting.
_DEFAULT_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("srcore_scan_backend", default=None)


@contextlib.contextmanager
def scan_backend(name: Backend | None) -> Iterator[None]:
    """Within the block, ``selective_scan(..., backend=None)`` uses back-end ``name``.

    An explicit ``backend=`` argument still wins; ``None`` restores the choice by device. Used e.g.
    to trace a model with the pure-torch back-end for export without touching its modules.
    """
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; use one of {', '.join(_BACKENDS)}")
    token = _DEFAULT_BACKEND.set(name)
    try:
        yield
    finally:
        _DEFAULT_BACKEND.reset(token)


def _resolve_backend(backend: str | None, u: torch.Tensor) -> str:
    if backend is None:
        backend = _DEFAULT_BACKEND.get()
    if backend is None:
        if u.is_cuda:
            return "cuda" if _mamba_available() else "torch"
        return "cpu"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; use reference, cpu, torch or cuda")
    if backend == "cpu" and u.device.type != "cpu":
        raise ValueError("backend='cpu' needs CPU tensors; move them with .cpu() or use backend='torch'")
    if backend == "cuda" and not (u.is_cuda and _mamba_available()):
        raise ValueError("backend='cuda' needs CUDA tensors and mamba-ssm (pip install 'srcore[cuda]')")
    return backend


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: Backend | None = None):
    """Selective scan with mamba-ssm semantics; see the module docstring. Differentiable.

    Returns ``y`` (B, D, L), or ``(y, last_state)`` with last_state (B, D, N) when
    ``return_last_state`` is set.
    """
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, D, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    if A.ndim != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (D, N) with D={u.shape[1]}; got {tuple(A.shape)}")
    if torch.is_complex(A):
        raise ValueError("complex A is not supported")
    name = _resolve_backend(backend, u)
    if name == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    Bg = B.unsqueeze(1) if B.ndim == 3 else B
    Cg = C.unsqueeze(1) if C.ndim == 3 else C
    if Bg.shape[1] != Cg.shape[1] or u.shape[1] % Bg.shape[1]:
        raise ValueError(f"B/C groups {Bg.shape[1]} must divide D={u.shape[1]}")
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u_c, delta_c = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    core = {"reference": _scan_reference, "cpu": _scan_cpu, "torch": _scan_torch}[name]
    y, last = core(u_c, delta_c, A.to(compute), Bg.to(compute), Cg.to(compute))
    if D is not None:
        y = y + u_c * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


def selective_scan_reference(*args, **kwargs):
    """The sequential reference (``backend="reference"``), for tests and benchmarks."""
    kwargs["backend"] = "reference"
    return selective_scan(*args, **kwargs)
