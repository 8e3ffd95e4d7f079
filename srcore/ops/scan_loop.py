"""The selective-scan core as TorchScript loops, so that a traced or exported graph has a size
independent of the sequence length (the ``loop`` back-end of ``srcore.ops.selective_scan``).

``scan_loop(u, delta, A, B, C)`` computes ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` and
``y_t = <C_t, h_t>`` with u, delta (B, D, L); A (D, N); B, C (B, G, N, L); it returns y (B, D, L)
and h_L (B, D, N). The sequence is cut into ``n`` chunks of ``T`` steps (T about sqrt(L), the
tail padded with delta = 0, which leaves the state unchanged), and runs in three passes:

1. the T steps of every chunk side by side from a zero state: each chunk's end state and total
   decay (a loop of T steps over (B, D, n, N) tensors);
2. the chunk start states, one chunk after the other (a loop of n steps over (B, D, N));
3. the T steps again from the true start states, giving y.

Each loop is a ``torch.jit.script`` loop: ``torch.jit.trace`` keeps it as ``prim::Loop``, and the
ONNX exporter writes it as an ONNX ``Loop`` whose trip count is computed from the input's shape.
Decays are products of per-step factors, never differences of cumulative sums, so the result
matches the sequential reference to float32 rounding. Pass 1 repeats the work of pass 3 without
the output; that is what keeps memory at O(B D L) instead of the O(B D L N) of a closed form.
"""

from __future__ import annotations

import torch

__all__ = ["scan_loop"]


@torch.jit.script
def _chunk_steps(length: int) -> int:
    """Steps per chunk: about sqrt(L) (both loops then run about sqrt(L) times), at least 8."""
    steps = 8
    while steps * steps < length:
        steps = steps * 2
    return steps


@torch.jit.script
def _to_chunks(x: torch.Tensor, steps: int, n_chunks: int, states: bool) -> torch.Tensor:
    """(b, g, c, L) zero-padded to n_chunks * steps, with step t of every chunk at [t]: as
    (steps, b, g, n_chunks, c) when the c axis holds states (B, C), else (steps, b, g, c, n_chunks).
    Non-negative dims throughout: onnxruntime refuses negative Transpose axes."""
    x = torch.nn.functional.pad(x, [0, n_chunks * steps - x.shape[3]])
    x = x.reshape([x.shape[0], x.shape[1], x.shape[2], n_chunks, steps])
    return x.permute([4, 0, 1, 3, 2]) if states else x.permute([4, 0, 1, 2, 3])


@torch.jit.script
def scan_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. Float32 or float64 inputs; no gradients needed (inference, export)."""
    bsz, dim, length = u.shape[0], u.shape[1], u.shape[2]
    groups, state = B.shape[1], A.shape[1]
    steps = _chunk_steps(length)
    n_chunks = (length + steps - 1) // steps
    # Channels as (groups, channels per group) so that B and C broadcast over a group's channels.
    shape = [bsz, groups, dim // groups]
    # (T, b, g, d, n, 1) and (T, b, g, 1, n, N): step t of every chunk, broadcast over the states
    dt = _to_chunks(delta.reshape(shape + [length]), steps, n_chunks, False).unsqueeze(5)
    du = _to_chunks((delta * u).reshape(shape + [length]), steps, n_chunks, False).unsqueeze(5)
    a = A.reshape([groups, dim // groups, 1, state])
    b = _to_chunks(B, steps, n_chunks, True).unsqueeze(3)
    c = _to_chunks(C, steps, n_chunks, True).unsqueeze(3)

    # Pass 1: each chunk's end state from a zero start.
    h = torch.zeros(shape + [n_chunks, state], dtype=u.dtype, device=u.device)
    for t in range(steps):
        h = torch.exp(dt[t] * a) * h + du[t] * b[t]
    chunk_decay = torch.exp(dt.sum(0) * a)  # (b, g, d, n, N)

    # Pass 2: start states, chunk after chunk.
    carry = torch.zeros(shape + [state], dtype=u.dtype, device=u.device)
    starts = []
    for k in range(n_chunks):
        starts.append(carry)
        carry = chunk_decay[:, :, :, k] * carry + h[:, :, :, k]
    h = torch.stack(starts, dim=3)

    # Pass 3: the outputs from the true start states.
    ys = []
    for t in range(steps):
        h = torch.exp(dt[t] * a) * h + du[t] * b[t]
        ys.append((h * c[t]).sum(4))
    y = torch.stack(ys, dim=4).reshape([bsz, dim, n_chunks * steps])
    return y[:, :, :length], carry.reshape([bsz, dim, state])
