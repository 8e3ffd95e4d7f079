"""The numba selective scan (``srcore.kernels.scan_cpu``) as torch custom ops with their autograd:
``selective_scan_cpu`` is the ``cpu`` back-end of ``srcore.ops.selective_scan``, as
``srcore.kernels.triton.selective_scan`` is its ``triton`` one.

Forward and backward are ops of their own (``srcore::selective_scan_cpu`` and ``..._backward``),
each with a fake registration, so a compiled model or training step traces them with fake tensors
instead of tracing into numpy. ``SCAN_OP`` is what the FLOP counter keys the scan by.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SCAN_OP", "needs_grad", "selective_scan_cpu"]

# Steps per chunk of the cpu back-end: its forward keeps the state at each chunk start for the
# backward, which recomputes the states inside one chunk at a time (a (chunk, N) buffer per thread).
_CHUNK_STEPS = 256


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


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, order=None):
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
    if needs_grad(*inputs):
        inputs = tuple(None if x is None else x.contiguous() for x in inputs)
    y, last, _ = _scan_cpu_op(*inputs, delta_softplus, order)
    return y, last
