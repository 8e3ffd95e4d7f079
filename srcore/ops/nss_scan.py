"""Selective scans of one feature map along several scan orders (MaIR's NSS sequences).

``nss_selective_scan`` takes every tensor in image order: u (B, Dc, L) shared by the K orders,
delta (B, K * Dc, L), B and C (B, K, N, L), and returns y (B, K * Dc, L) in image order, where
sequence k visits map position ``order[k, t]`` at step t. On the triton back-end, and on the cpu
back-end without gradients, one fused kernel reads the map through the order and writes back in
image order, so no permuted copy exists; every other case gathers the K sequences, scans them with
``selective_scan`` and scatters the result back (the same values, and the test oracle of the fused
kernels).
"""

from __future__ import annotations

import torch

from srcore.kernels.scan_cpu_op import needs_grad, selective_scan_cpu
from srcore.ops.selective_scan import Backend, resolve_backend, selective_scan

__all__ = ["gather_sequences", "nss_selective_scan"]


def gather_sequences(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, K, C, L) in image order -> sequence order: out[:, k, :, t] = x[:, k, :, order[k, t]]."""
    return torch.gather(x, -1, order[None, :, None, :].expand(x.shape[0], -1, x.shape[2], -1))


def nss_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, order: torch.Tensor, D: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       backend: Backend | None = None, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Scan ``u`` along each of the K orders (see the module docstring). Differentiable.

    ``order`` (K, L) integer, on u's device; A, D, delta_bias are (K * Dc, ...) as for
    ``selective_scan`` with K groups; ``inverse``: argsort of ``order`` when the caller has it.
    """
    bsz, dc, length = u.shape
    k = order.shape[0]
    if order.ndim != 2 or order.shape[1] != length:
        raise ValueError(f"order must be (K, L) with L={length}; got {tuple(order.shape)}")
    if delta.shape != (bsz, k * dc, length) or B.shape[1] != k or C.shape[1] != k:
        raise ValueError(f"for {k} orders of u {tuple(u.shape)}, delta must be ({bsz}, {k * dc}, {length}) "
                         f"and B, C (B, {k}, N, L); got {tuple(delta.shape)}, {tuple(B.shape)}, "
                         f"{tuple(C.shape)}")
    name = resolve_backend(backend, u.device)
    if name == "triton":
        from srcore.kernels.triton.selective_scan import selective_scan_triton

        y, _ = selective_scan_triton(u, delta, A, B.contiguous(), C.contiguous(), D, None, delta_bias,
                                     delta_softplus, index=order)
        return y
    if name == "cpu" and u.dtype in (torch.float32, torch.float64) and not needs_grad(u, delta, A, B, C, D,
                                                                                   delta_bias):
        return selective_scan_cpu(u, delta, A, B, C, D, None, delta_bias, delta_softplus, order)[0]
    xs = gather_sequences(u.unsqueeze(1).expand(bsz, k, dc, length), order)
    ds = gather_sequences(delta.view(bsz, k, dc, length), order)
    ys = selective_scan(xs.reshape(bsz, k * dc, length), ds.reshape(bsz, k * dc, length), A,
                        gather_sequences(B, order), gather_sequences(C, order), D=D, delta_bias=delta_bias,
                        delta_softplus=delta_softplus, backend=name)
    inverse = torch.argsort(order, dim=1) if inverse is None else inverse
    return gather_sequences(ys.view(bsz, k, dc, length), inverse).reshape(bsz, k * dc, length)
