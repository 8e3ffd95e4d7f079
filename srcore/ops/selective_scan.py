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
  gradients bias, softplus, D and the z gate run inside the kernel too (see
  ``srcore.kernels.scan_cpu_op.selective_scan_cpu``).
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

import torch
import torch.nn.functional as F

from srcore.kernels.scan_cpu_op import SCAN_OP, needs_grad, selective_scan_cpu
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
    if name == "cpu" and not needs_grad(u, delta, A, B, C, D, z, delta_bias):
        extras = (None if x is None else x.to(compute) for x in (D, z, delta_bias))
        y, last = selective_scan_cpu(u_c, delta_c, A.to(compute), Bg.to(compute), Cg.to(compute), *extras,
                            delta_softplus)
        y = y.to(dtype_in)
        return (y, last) if return_last_state else y
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    if name == "loop" and needs_grad(u, delta, A, B, C, D, z, delta_bias):
        raise ValueError("backend='loop' is for inference and export (no gradients); use 'torch' or 'cpu'")
    core = {"reference": _scan_reference, "cpu": selective_scan_cpu, "torch": _scan_torch,
            "loop": scan_loop}[name]
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
