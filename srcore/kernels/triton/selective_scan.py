"""Selective scan as two Triton kernels (forward, backward) with mamba-ssm's fused semantics.

``selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)``
matches ``srcore.ops.selective_scan`` (shapes u, delta, z: (B, D, L); A: (D, N); B, C:
(B, G, N, L); D, delta_bias: (D,)) and computes in float32 whatever the input dtype.

One program owns (batch b, a block of BLOCK_D channels of one group) and walks L in chunks of
CHUNK steps. Per chunk it loads u, delta (BLOCK_D, CHUNK) and B, C (N, CHUNK) once, forms the
decay exp(delta A) and input delta u B as (BLOCK_D, N, CHUNK) tiles in registers, runs a parallel
associative scan along the chunk and carries the N-wide state into the next chunk; bias,
softplus, the D skip and the SiLU gate are applied in the same pass. The forward stores the state
at each chunk start (B, D, n_chunks, N); the backward walks the chunks in reverse, recomputes a
chunk's states from its start state, and scans the gradient of the state backwards in the same
way (a reverse associative scan), so nothing of size L x N is kept between the passes.
Gradients of B, C, A, D and delta_bias are summed over programs with atomic adds (float32).

Scan orders (MaIR's NSS): with ``index`` (G, L) the scan of group g visits position
``index[g, t]`` at step t. Every per-step load and store (u, delta, z, B, C, y and their
gradients) goes through that index, so the tensors stay in image order: no permuted copy is
made on the way in and no inverse gather on the way out. ``u`` may then be shared by the groups
((B, D / G, L), read with a group stride of 0); its gradient is summed over the groups.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton"]


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    """(a, b) pairs of h -> a * h + b, composed left then right."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _delta_act(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta after the optional bias and softplus (mamba-ssm's threshold of 20)."""
    x = raw
    if HAS_BIAS:
        x = x + bias[:, None]
    if SOFTPLUS:
        x = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)
    return x


@triton.jit
def _program(a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, starts_ptr, dim, length, n_state, per_group, n_chunks,
             su_b, su_g, su_c, sb_b, sb_g, sb_n, sc_b, sc_g, sc_n, HAS_D: tl.constexpr,
             HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """Indices, masks, per-channel parameters and base pointers of one (batch, channel block) program."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_d = offs_d < dim
    mask_n = offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // per_group
    a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dskip = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * dim + offs_d[:, None]) * length  # delta, z, y and the gradients: (B, D, L)
    row_u = pid_b * su_b + group * su_g + (offs_d - group * per_group)[:, None] * su_c
    b_base = b_ptr + pid_b * sb_b + group * sb_g + offs_n[:, None] * sb_n
    c_base = c_ptr + pid_b * sc_b + group * sc_g + offs_n[:, None] * sc_n
    state_base = starts_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * n_state + offs_n[None, :]
    return (pid_b, group, offs_d, offs_n, offs_t, mask_d, mask_n, mask_dn, a, bias, dskip, row, row_u, b_base,
            c_base, state_base)


@triton.jit
def _positions(idx_ptr, group, length, t, mask_t, HAS_IDX: tl.constexpr):
    """Positions in memory of steps t: through the group's scan order, or t itself."""
    if HAS_IDX:
        return tl.load(idx_ptr + group * length + t, mask=mask_t, other=0)
    return t


@triton.jit
def _chunk_states(u_ptr, delta_ptr, row, row_u, b_base, c_base, a, bias, h0, pos, mask_t, mask_d, mask_n,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Load one chunk (steps at memory positions pos), form decay and input tiles (BLOCK_D, N, CHUNK)
    and scan them from state h0."""
    mask_dt = mask_d[:, None] & mask_t[None, :]
    mask_nt = mask_n[:, None] & mask_t[None, :]
    u = tl.load(u_ptr + row_u + pos[None, :], mask=mask_dt, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr + row + pos[None, :], mask=mask_dt, other=0.0).to(tl.float32)
    dt = _delta_act(raw, bias, HAS_BIAS, SOFTPLUS)
    bv = tl.load(b_base + pos[None, :], mask=mask_nt, other=0.0).to(tl.float32)
    cv = tl.load(c_base + pos[None, :], mask=mask_nt, other=0.0).to(tl.float32)
    # past the end the decay is 1 and the input 0 (u loads as 0), so h keeps its last value
    decay = tl.where(mask_t[None, None, :], tl.exp(dt[:, None, :] * a[:, :, None]), 1.0)
    inp = (dt * u)[:, None, :] * bv[None, :, :]
    prod, hs = tl.associative_scan((decay, inp), 2, _combine)
    return u, raw, dt, bv, cv, decay, inp, hs + prod * h0[:, :, None]


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, idx_ptr, y_ptr,
                     last_ptr, starts_ptr, dim, length, n_state, per_group, n_chunks,
                     su_b, su_g, su_c, sb_b, sb_g, sb_n, sc_b, sc_g, sc_n,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_IDX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     CHUNK: tl.constexpr):
    (pid_b, group, offs_d, offs_n, offs_t, mask_d, mask_n, mask_dn, a, bias, dskip, row, row_u, b_base,
     c_base, state_base) = _program(a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, starts_ptr, dim, length,
                                    n_state, per_group, n_chunks, su_b, su_g, su_c, sb_b, sb_g, sb_n, sc_b,
                                    sc_g, sc_n, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, CHUNK)
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for ci in range(n_chunks):
        t = ci * CHUNK + offs_t
        mask_t = t < length
        mask_dt = mask_d[:, None] & mask_t[None, :]
        pos = _positions(idx_ptr, group, length, t, mask_t, HAS_IDX)
        tl.store(state_base + ci * n_state, h, mask=mask_dn)
        u, _, _, _, cv, _, _, hs = _chunk_states(u_ptr, delta_ptr, row, row_u, b_base, c_base, a, bias, h,
                                                 pos, mask_t, mask_d, mask_n, HAS_BIAS, SOFTPLUS)
        y = tl.sum(hs * cv[None, :, :], axis=1)
        if HAS_D:
            y = y + u * dskip[:, None]
        if HAS_Z:
            zv = tl.load(z_ptr + row + pos[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_ptr + row + pos[None, :], y.to(y_ptr.dtype.element_ty), mask=mask_dt)
        h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * n_state + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, idx_ptr, starts_ptr,
                     dy_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, da_ptr, db_ptr, dc_ptr, ddskip_ptr,
                     dbias_ptr, dim, length, n_state, per_group, n_chunks,
                     su_b, su_g, su_c, sb_b, sb_g, sb_n, sc_b, sc_g, sc_n, sdb_b, sdb_g, sdb_n,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_IDX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                     HAS_DLAST: tl.constexpr):
    (pid_b, group, offs_d, offs_n, offs_t, mask_d, mask_n, mask_dn, a, bias, dskip, row, row_u, b_base,
     c_base, state_base) = _program(a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, starts_ptr, dim, length,
                                    n_state, per_group, n_chunks, su_b, su_g, su_c, sb_b, sb_g, sb_n, sc_b,
                                    sc_g, sc_n, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, CHUNK)
    db_base = db_ptr + pid_b * sdb_b + group * sdb_g + offs_n[:, None] * sdb_n
    dc_base = dc_ptr + pid_b * sdb_b + group * sdb_g + offs_n[:, None] * sdb_n
    state_base = starts_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * n_state + offs_n[None, :]
    carry = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)  # dL/dh at the end of the chunk, from later steps
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + (pid_b * dim + offs_d[:, None]) * n_state + offs_n[None, :], mask=mask_dn,
                        other=0.0).to(tl.float32)
    d_a = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    d_dskip = tl.zeros((BLOCK_D,), tl.float32)
    d_bias = tl.zeros((BLOCK_D,), tl.float32)
    for k in range(n_chunks):
        ci = n_chunks - 1 - k
        t = ci * CHUNK + offs_t
        mask_t = t < length
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        # Recompute the chunk's states from its start state.
        pos = _positions(idx_ptr, group, length, t, mask_t, HAS_IDX)
        h0 = tl.load(state_base + ci * n_state, mask=mask_dn, other=0.0)
        u, raw, dt, bv, cv, decay, inp, hs = _chunk_states(u_ptr, delta_ptr, row, row_u, b_base, c_base, a,
                                                           bias, h0, pos, mask_t, mask_d, mask_n, HAS_BIAS,
                                                           SOFTPLUS)
        # Output side: gate, skip.
        dy = tl.load(dy_ptr + row + pos[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + row + pos[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zv)
            y_pre = tl.sum(hs * cv[None, :, :], axis=1)
            if HAS_D:
                y_pre = y_pre + u * dskip[:, None]
            tl.store(dz_ptr + row + pos[None, :], (dy * y_pre * sig * (1.0 + zv * (1.0 - sig))).to(
                dz_ptr.dtype.element_ty), mask=mask_dt)
            dy = dy * zv * sig
        d_u = tl.zeros((BLOCK_D, CHUNK), tl.float32)
        if HAS_D:
            d_dskip += tl.sum(dy * u, axis=1)
            d_u = dy * dskip[:, None]
        tl.atomic_add(dc_base + pos[None, :], tl.sum(dy[:, None, :] * hs, axis=0), mask=mask_nt)
        # dL/dh_t = dy_t C_t + exp(delta_{t+1} A) dL/dh_{t+1}: a reverse scan whose decay is the next step's.
        t_next = t + 1
        pos_next = _positions(idx_ptr, group, length, t_next, t_next < length, HAS_IDX)
        mask_next = mask_d[:, None] & (t_next < length)[None, :]
        raw_next = tl.load(delta_ptr + row + pos_next[None, :], mask=mask_next, other=0.0).to(tl.float32)
        dt_next = _delta_act(raw_next, bias, HAS_BIAS, SOFTPLUS)
        decay_next = tl.where(mask_next[:, None, :], tl.exp(dt_next[:, None, :] * a[:, :, None]), 1.0)
        last_t = tl.minimum(length, (ci + 1) * CHUNK) - 1
        src = dy[:, None, :] * cv[None, :, :] + tl.where(t[None, None, :] == last_t, carry[:, :, None], 0.0)
        _, gs = tl.associative_scan((decay_next, src), 2, _combine, reverse=True)
        # a_t h_{t-1} = h_t - delta_t u_t B_t, so no shifted copy of the states is needed.
        dlog = gs * (hs - inp)  # d/d(delta A) of exp(delta A) h_{t-1}
        d_a += tl.sum(dlog * dt[:, None, :], axis=2)
        gb = tl.sum(gs * bv[None, :, :], axis=1)
        d_dt = tl.sum(dlog * a[:, :, None], axis=1) + gb * u
        d_u += gb * dt
        tl.atomic_add(db_base + pos[None, :], tl.sum(gs * (dt * u)[:, None, :], axis=0), mask=mask_nt)
        if SOFTPLUS:
            pre = raw
            if HAS_BIAS:
                pre = pre + bias[:, None]
            d_dt = tl.where(pre <= 20.0, d_dt * tl.sigmoid(pre), d_dt)
        d_dt = tl.where(mask_dt, d_dt, 0.0)
        d_bias += tl.sum(d_dt, axis=1)
        tl.store(du_ptr + row + pos[None, :], d_u.to(du_ptr.dtype.element_ty), mask=mask_dt)
        tl.store(ddelta_ptr + row + pos[None, :], d_dt.to(ddelta_ptr.dtype.element_ty), mask=mask_dt)
        carry = tl.sum(tl.where(offs_t[None, None, :] == 0, decay * gs, 0.0), axis=2)
    tl.atomic_add(da_ptr + offs_d[:, None] * n_state + offs_n[None, :], d_a, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(ddskip_ptr + offs_d, d_dskip, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, d_bias, mask=mask_d)


def _block_d(per_group: int) -> int:
    """Largest power of two <= 8 dividing the channels of a group, so a block never spans two groups."""
    block = 8
    while per_group % block:
        block //= 2
    return block


def _n_chunks(length: int, chunk: int) -> int:
    return triton.cdiv(length, chunk)


def _launch(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, chunk):
    """Grid, the leading tensor arguments, the sizes and strides, and the flags both kernels share."""
    bsz, dim, length = delta.shape
    per_group = dim // B.shape[1]
    block_d = _block_d(per_group)
    shared = u.shape[1] != dim  # (B, D / G, L): one u read by every group
    tensors = (u, delta, A, B, C, delta if D is None else D, delta if z is None else z,
               delta if delta_bias is None else delta_bias,
               delta if index is None else index)  # delta stands in for absent optional inputs
    sizes = (dim, length, A.shape[1], per_group, _n_chunks(length, chunk),
             u.stride(0), 0 if shared else per_group * u.stride(1), u.stride(1),
             B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2))
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=delta_softplus, HAS_IDX=index is not None, BLOCK_D=block_d,
                 BLOCK_N=triton.next_power_of_2(A.shape[1]), CHUNK=chunk)
    return (bsz, triton.cdiv(dim, block_d)), tensors, sizes, flags


def _check_index(index: torch.Tensor, groups: int, length: int, device: torch.device) -> torch.Tensor:
    if index.shape != (groups, length):
        raise ValueError(f"index must be (G, L) = ({groups}, {length}), one scan order per group of B/C; "
                         f"got {tuple(index.shape)}")
    if index.dtype not in (torch.int32, torch.int64) or index.device != device:
        raise ValueError(f"index must be an integer tensor on {device}; got {index.dtype} on {index.device}")
    return index.to(torch.int32).contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, chunk):
        u, delta, A, B, C = (x.contiguous() for x in (u, delta, A, B, C))
        D, z, delta_bias = (None if x is None else x.contiguous() for x in (D, z, delta_bias))
        bsz, dim, length = delta.shape
        state = A.shape[1]
        grid, tensors, sizes, flags = _launch(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus,
                                              chunk)
        y = torch.empty_like(delta, dtype=u.dtype)
        last = torch.empty(bsz, dim, state, device=u.device, dtype=torch.float32)
        starts = torch.empty(bsz, dim, _n_chunks(length, chunk), state, device=u.device, dtype=torch.float32)
        _scan_fwd_kernel[grid](*tensors, y, last, starts, *sizes, **flags)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, index, starts)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return y, last.to(u.dtype)

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, delta_bias, index, starts = ctx.saved_tensors
        dim, state = A.shape
        grid, tensors, sizes, flags = _launch(u, delta, A, B, C, D, z, delta_bias, index, ctx.delta_softplus,
                                              ctx.chunk)
        dy = torch.zeros_like(delta, dtype=u.dtype) if dy is None else dy.contiguous()
        f32 = dict(device=u.device, dtype=torch.float32)
        d_u, d_delta = torch.empty_like(delta, dtype=u.dtype), torch.empty_like(delta)
        d_z = torch.empty_like(z) if z is not None else None
        d_a = torch.zeros(dim, state, **f32)
        d_b = torch.zeros(B.shape, **f32)
        d_c = torch.zeros(B.shape, **f32)
        d_dskip = torch.zeros(dim, **f32)
        d_bias = torch.zeros(dim, **f32)
        _scan_bwd_kernel[grid](*tensors, starts, dy, delta if dlast is None else dlast.contiguous(), d_u,
                               d_delta, delta if d_z is None else d_z, d_a, d_b, d_c, d_dskip, d_bias, *sizes,
                               d_b.stride(0), d_b.stride(1), d_b.stride(2), **flags,
                               HAS_DLAST=dlast is not None)
        if u.shape[1] != dim:  # u shared by the groups: its gradient is the sum of theirs
            d_u = d_u.view(u.shape[0], B.shape[1], u.shape[1], -1).sum(1)
        return (d_u, d_delta, d_a.to(A.dtype), d_b.to(B.dtype), d_c.to(C.dtype),
                None if D is None else d_dskip.to(D.dtype), d_z,
                None if delta_bias is None else d_bias.to(delta_bias.dtype), None, None, None)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                          chunk: int = 64, index: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused selective scan; B, C must be (B, G, N, L). Returns y (B, D, L) and the last state (B, D, N).

    ``chunk`` (a power of two) is the number of steps one associative scan covers. ``index`` (G, L):
    the scan order of each group (see the module docstring); every (B, ., L) tensor, y included, is
    then in memory order, and u may be (B, D / G, L), shared by the groups.
    """
    groups, length = B.shape[1], delta.shape[-1]
    if u.shape[1] != delta.shape[1] and (index is None or u.shape[1] * groups != delta.shape[1]):
        raise ValueError(f"u must be (B, D, L) like delta {tuple(delta.shape)}, or (B, D / G, L) with an "
                         f"index; got {tuple(u.shape)}")
    if index is not None:
        index = _check_index(index, groups, length, u.device)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, chunk)
