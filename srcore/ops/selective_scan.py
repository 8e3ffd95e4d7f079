"""Selective scan (the S6 recurrence of Mamba) with interchangeable back-ends.

``selective_scan`` follows mamba-ssm's ``selective_scan_fn`` semantics::

    delta = softplus(delta + delta_bias)             (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t   = <C_t, h_t> + D * u_t ;  y = y * silu(z)  (D and z optional)

Shapes: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L); D, delta_bias (D,).

Back-ends:
- ``reference``: a plain sequential loop in torch; the truth the tests compare against.
- ``cpu``: one fused numba pass forward and one backward (the default on CPU; see
  ``srcore.kernels.scan_cpu``); no (B, D, L, N) tensor, state accumulated in float64. Without
  gradients bias, softplus, D and the z gate run inside the kernel too (see ``_scan_cpu``).
- ``torch``: a blocked closed form in pure torch (any device; the last resort on CUDA).
- ``loop``: TorchScript loops over chunks of about sqrt(L) steps (``srcore.ops.scan_loop``; any
  device, no gradients): a traced or exported graph whose size does not depend on L. Export uses it.
- ``triton``: srcore's fused Triton kernels (``srcore.kernels.triton``; the default on CUDA when
  Triton imports; on CPU only under ``TRITON_INTERPRET=1``, for tests).
- ``cuda``: mamba-ssm's fused kernel, when it is installed, asked for and the inputs are on CUDA.

On CUDA a call that names no back-end uses triton, else torch; mamba-ssm only when asked for.
``resolve_backend`` makes that choice (``selective_scan`` calls it) and ``model_scan_backend`` reports it
for a model's Mamba blocks, so what ``srcore profile``/``eval`` print is what runs.
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

from srcore.kernels.triton import INSTALL_HINT, interpreted, triton_available
from srcore.ops.scan_loop import scan_loop

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND_LABELS",
    "SCAN_OP",
    "available_backends",
    "model_scan_backend",
    "resolve_backend",
    "scan_backend",
    "scan_flops",
    "selective_scan",
    "selective_scan_reference",
]

Backend = Literal["reference", "cpu", "torch", "loop", "triton", "cuda"]
_BACKENDS = ("reference", "cpu", "torch", "loop", "triton", "cuda")
# What the reports call each back-end (the implementation behind the short name).
BACKEND_LABELS = {"reference": "reference", "cpu": "numba-cpu", "torch": "torch", "loop": "torch-loop",
                  "triton": "triton", "cuda": "mamba-ssm"}

# Steps per chunk of the cpu back-end: its forward keeps the state at each chunk start for the
# backward, which recomputes the states inside one chunk at a time (a (chunk, N) buffer per thread).
_CHUNK_STEPS = 256


def scan_flops(batch: int, length: int, channels: int, state: int) -> int:
    """FLOPs of one selective scan as the efficiency tables count them: 9 * B * L * D * N."""
    return 9 * batch * length * channels * state


def _mamba_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Back-ends usable for tensors on ``device`` in this environment, with gradients (``loop``, for
    inference and export only, is not listed)."""
    backends = ["reference", "cpu", "torch"]
    if torch.device(device).type == "cuda" and triton_available():
        backends.append("triton")
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


def _n_chunks(length: int) -> int:
    return max(1, -(-length // _CHUNK_STEPS))


def _rows(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, D, L) as a contiguous (B*D, L) tensor, as the backward kernel reads it."""
    return None if x is None else x.contiguous().view(-1, x.shape[-1])


def _as_rows(x: torch.Tensor) -> np.ndarray:
    """(B, D, L) tensor as a C-contiguous (B*D, L) array sharing memory where possible."""
    return x.contiguous().view(-1, x.shape[-1]).numpy()


def _steps_last(x: torch.Tensor) -> np.ndarray:
    """(B, G, N, L) to a C-contiguous (B, G, L, N) array: the N states of one step side by side."""
    return x.transpose(-1, -2).contiguous().numpy()


def _token_view(x: torch.Tensor) -> np.ndarray:
    """(B, G, N, L) as the forward kernel reads it: a C-contiguous (B, L, G, N) array. Always a copy
    (N*L per group, small beside the (D, L) inputs): numba compiles a strided view without
    vectorising the loop over N, which measured 3.4x slower on the whole scan."""
    return x.permute(0, 3, 1, 2).contiguous().numpy()


def _optional(x: torch.Tensor | None, like: torch.Tensor, ndim: int) -> np.ndarray:
    """An optional input as the kernel takes it: its array (any strides), or an empty one."""
    if x is None:
        return np.empty((0,) * ndim, dtype=like.numpy().dtype if like.is_floating_point() else np.int64)
    return x.numpy()


@torch.library.custom_op("srcore::selective_scan_cpu", mutates_args=())
def _scan_cpu_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 delta_softplus: bool, order: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import numba

    from srcore.kernels.scan_cpu import scan_forward

    bsz, dim, length = delta.shape
    state = A.shape[1]
    y = torch.empty(bsz, dim, length, dtype=delta.dtype)
    last = torch.zeros(bsz * dim, state, dtype=torch.float64)
    starts = torch.empty(_n_chunks(length), bsz * dim, state, dtype=torch.float64)
    n_parts = min(numba.get_num_threads(), bsz * dim)
    scan_forward(u.numpy(), delta.numpy(), A.contiguous().numpy(), _token_view(B), _token_view(C),
                 _optional(D, u, 1), _optional(z, u, 3), _optional(delta_bias, u, 1),
                 _optional(order, torch.empty(0, dtype=torch.int64), 2), D is not None, z is not None,
                 delta_bias is not None, order is not None, delta_softplus, _CHUNK_STEPS, n_parts,
                 y.numpy(), last.numpy(), starts.numpy())
    return y, last.to(delta.dtype).view(bsz, dim, state), starts


@_scan_cpu_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, order=None):
    bsz, dim, length = delta.shape
    state = A.shape[1]
    return (delta.new_empty(bsz, dim, length), delta.new_empty(bsz, dim, state),
            delta.new_empty(_n_chunks(length), bsz * dim, state, dtype=torch.float64))


def _scan_cpu_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, order = inputs
    if order is not None:
        raise ValueError("the cpu scan takes scan orders for inference only; gather the sequences to train")
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus = delta_softplus
    ctx.mark_non_differentiable(output[2])


@torch.library.custom_op("srcore::selective_scan_cpu_backward", mutates_args=())
def _scan_cpu_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                     starts: torch.Tensor, dy: torch.Tensor | None, dlast: torch.Tensor | None,
                     delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The numba backward as an op of its own, so that a compiled training step (AOT autograd traces
    the backward with fake tensors) calls it instead of tracing into numpy. Gradients of absent
    optional inputs come back empty."""
    import numba

    from srcore.kernels.scan_cpu import scan_backward

    bsz, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    rows = bsz * dim
    dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype)
    carry = (torch.zeros(rows, state, dtype=torch.float64) if dlast is None
             else dlast.reshape(rows, state).to(torch.float64, copy=True))
    d_u, d_delta = torch.empty_like(u), torch.empty_like(u)
    d_z = torch.empty_like(u) if z is not None else None
    d_a_rows = torch.zeros(rows, state, dtype=torch.float64)
    d_skip_rows = torch.zeros(rows, dtype=torch.float64)
    d_bias_rows = torch.zeros(rows, dtype=torch.float64)
    n_parts = min(numba.get_num_threads(), rows)
    d_b_parts = torch.zeros(n_parts, bsz, groups, length, state, dtype=torch.float64)
    d_c_parts = torch.zeros_like(d_b_parts)
    scan_backward(_as_rows(u), _as_rows(delta), A.contiguous().numpy(), _steps_last(B), _steps_last(C),
                  _optional(D, u, 1), _optional(_rows(z), u, 2), _optional(delta_bias, u, 1), D is not None,
                  z is not None, delta_bias is not None, delta_softplus, _CHUNK_STEPS, starts.numpy(),
                  _as_rows(dy), carry.numpy(), d_u.view(rows, length).numpy(),
                  d_delta.view(rows, length).numpy(), _optional(_rows(d_z), u, 2), d_a_rows.numpy(),
                  d_skip_rows.numpy(), d_bias_rows.numpy(), d_b_parts.numpy(), d_c_parts.numpy())
    return (d_u, d_delta, d_a_rows.view(bsz, dim, state).sum(0).to(A.dtype),
            d_b_parts.sum(0).transpose(-1, -2).to(B.dtype).contiguous(),
            d_c_parts.sum(0).transpose(-1, -2).to(C.dtype).contiguous(),
            u.new_empty(0) if D is None else d_skip_rows.view(bsz, dim).sum(0).to(D.dtype),
            u.new_empty(0) if d_z is None else d_z,
            u.new_empty(0) if delta_bias is None else d_bias_rows.view(bsz, dim).sum(0).to(delta_bias.dtype))


@_scan_cpu_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, starts, dy, dlast, delta_softplus):
    return (torch.empty_like(u), torch.empty_like(u), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), u.new_empty(0) if D is None else torch.empty_like(D),
            u.new_empty(0) if z is None else torch.empty_like(u),
            u.new_empty(0) if delta_bias is None else torch.empty_like(delta_bias))


def _scan_cpu_backward(ctx, dy, dlast, _dstarts):
    u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
    d_u, d_delta, d_a, d_b, d_c, d_skip, d_z, d_bias = _scan_cpu_bwd_op(
        u, delta, A, B, C, D, z, delta_bias, starts, dy, dlast, ctx.delta_softplus)
    return (d_u, d_delta, d_a, d_b, d_c, None if D is None else d_skip, None if z is None else d_z,
            None if delta_bias is None else d_bias, None, None)


_scan_cpu_op.register_autograd(_scan_cpu_backward, setup_context=_scan_cpu_setup)

SCAN_OP = torch.ops.srcore.selective_scan_cpu.default


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, order=None):
    """The numba pass as one custom op; given D, z, delta_bias or softplus it applies them itself.

    ``selective_scan`` passes them in when no gradient is needed (inference: no (B, D, L)
    temporaries, the forward a little faster). Calls that need gradients keep them as torch
    element-wise ops around the core kernel: with them inside, the kernel's backward measured
    10-40% slower on a 2-core CPU than the core backward plus torch's vectorised element-wise
    backward (docs/kernels.md). The fused backward stays correct and tested for direct calls.

    Without gradients the kernel reads its inputs where they are (views of the projections'
    outputs, any strides; ``order``: the scan orders of ``srcore.ops.nss_scan``); the backward
    needs contiguous rows, so inputs that need gradients are made contiguous first.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if _needs_grad(*inputs):
        inputs = tuple(None if x is None else x.contiguous() for x in inputs)
    y, last, _ = _scan_cpu_op(*inputs, delta_softplus, order)
    return y, last


# --------------------------------------------------------------------------------------------
# Public entry point


# The back-end a call with ``backend=None`` uses; None means "chosen by device". A context variable
# (not a module global) so that threads and tasks each see their own setting.
_DEFAULT_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("srcore_scan_backend",
                                                                              default=None)


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


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The back-end ``selective_scan(..., backend=backend)`` runs for tensors on ``device``.

    ``None`` follows ``scan_backend`` if one is active, else the device: triton on CUDA (torch when
    Triton is missing), the numba kernel on CPU. Refuses a named back-end the device cannot run.
    """
    is_cuda = torch.device(device).type == "cuda"
    if backend is None:
        backend = _DEFAULT_BACKEND.get()
    if backend is None:
        if is_cuda:
            return "triton" if triton_available() else "torch"
        return "cpu"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; use one of {', '.join(_BACKENDS)}")
    if backend == "cpu" and torch.device(device).type != "cpu":
        raise ValueError("backend='cpu' needs CPU tensors; move them with .cpu() or use backend='torch'")
    if backend == "triton" and not triton_available():
        raise ValueError(INSTALL_HINT)
    if backend == "triton" and not (is_cuda or interpreted()):
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run it on CPU)")
    if backend == "cuda" and not (is_cuda and _mamba_available()):
        raise ValueError("backend='cuda' needs CUDA tensors and mamba-ssm (pip install 'srcore[cuda]')")
    return backend


def model_scan_backend(model: torch.nn.Module, device: torch.device | str) -> str | None:
    """Label (``BACKEND_LABELS``) of the scan back-end ``model``'s Mamba blocks run on ``device``.

    None when the model has no selective scan. Blocks forced to different back-ends are listed
    joined by '+'. The reports of ``srcore profile`` and ``srcore eval`` come from here.
    """
    names = {resolve_backend(m.scan_backend, device) for m in model.modules() if hasattr(m, "scan_backend")}
    return "+".join(sorted(BACKEND_LABELS[n] for n in names)) if names else None


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
    name = resolve_backend(backend, u.device)
    if name == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    Bg = B.unsqueeze(1) if B.ndim == 3 else B
    Cg = C.unsqueeze(1) if C.ndim == 3 else C
    if Bg.shape[1] != Cg.shape[1] or u.shape[1] % Bg.shape[1]:
        raise ValueError(f"B/C groups {Bg.shape[1]} must divide D={u.shape[1]}")
    if name == "triton":
        from srcore.kernels.triton.selective_scan import selective_scan_triton

        y, last = selective_scan_triton(u, delta, A, Bg, Cg, D, z, delta_bias, delta_softplus)
        return (y, last) if return_last_state else y
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u_c, delta_c = u.to(compute), delta.to(compute)
    if name == "cpu" and not _needs_grad(u, delta, A, B, C, D, z, delta_bias):
        extras = (None if x is None else x.to(compute) for x in (D, z, delta_bias))
        y, last = _scan_cpu(u_c, delta_c, A.to(compute), Bg.to(compute), Cg.to(compute), *extras,
                            delta_softplus)
        y = y.to(dtype_in)
        return (y, last) if return_last_state else y
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    if name == "loop" and _needs_grad(u, delta, A, B, C, D, z, delta_bias):
        raise ValueError("backend='loop' is for inference and export (no gradients); use 'torch' or 'cpu'")
    core = {"reference": _scan_reference, "cpu": _scan_cpu, "torch": _scan_torch, "loop": scan_loop}[name]
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
