"""Involution as Triton kernels: per-pixel k x k kernels applied without the unfold tensor.

``involution_triton(x, weight, kernel_size, groups)`` matches ``srcore.ops.involution`` (x: (B, C, H,
W); weight: (B, groups * k * k, H, W); stride 1, same padding, zeros outside the map) and is
differentiable. One program owns (batch, group, a block of BLOCK_P pixels) and all channels of
the group; per tap it loads the tap's weight row once and the shifted input tile, so the input is
read k*k times from cache and never copied. The backward is two kernels of the same shape: the
input gradient gathers dout * weight from the taps that reach each pixel, the weight gradient
sums dout * x over the channels of the group. Accumulation is in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["involution_triton"]

_BLOCK_P = 64


@triton.jit
def _tile(pid_bg, pid_p, groups, per_group, height, width, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Batch, group, channel and pixel indices of one program and their masks."""
    b = pid_bg // groups
    g = pid_bg % groups
    offs_c = g * per_group + tl.arange(0, BLOCK_C)
    mask_c = tl.arange(0, BLOCK_C) < per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < height * width
    return b, g, offs_c, mask_c, offs_p // width, offs_p % width, mask_p


@triton.jit
def _involution_gather_kernel(src_ptr, w_ptr, out_ptr, channels, groups, per_group, height, width,
                              K: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_P: tl.constexpr):
    """out at p = sum over taps of weight * src, gathered from q = p + offset (the forward, src = x,
    weight at p) or from q = p - offset (the input gradient, src = dout, weight at q: the pixels
    whose tap reaches p)."""
    b, g, offs_c, mask_c, py, px, mask_p = _tile(tl.program_id(0), tl.program_id(1), groups, per_group,
                                                 height, width, BLOCK_C, BLOCK_P)
    hw = height * width
    src_rows = src_ptr + (b * channels + offs_c[:, None]) * hw
    acc = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
    for tap in tl.static_range(K * K):
        dy = tap // K - (K - 1) // 2
        dx = tap % K - (K - 1) // 2
        if TRANSPOSED:
            qy, qx = py - dy, px - dx
        else:
            qy, qx = py + dy, px + dx
        inside = mask_p & (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        w_tap = w_ptr + ((b * groups + g) * K * K + tap) * hw
        if TRANSPOSED:
            wv = tl.load(w_tap + qy * width + qx, mask=inside, other=0.0)
        else:
            wv = tl.load(w_tap + py * width + px, mask=mask_p, other=0.0)
        sv = tl.load(src_rows + (qy * width + qx)[None, :], mask=mask_c[:, None] & inside[None, :], other=0.0)
        acc += wv.to(tl.float32)[None, :] * sv.to(tl.float32)
    out = out_ptr + (b * channels + offs_c[:, None]) * hw + (py * width + px)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])


@triton.jit
def _involution_dw_kernel(dout_ptr, x_ptr, dw_ptr, channels, groups, per_group, height, width,
                          K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """dweight[tap] at p = sum over the group's channels of dout at p times x at p + offset."""
    b, g, offs_c, mask_c, py, px, mask_p = _tile(tl.program_id(0), tl.program_id(1), groups, per_group,
                                                 height, width, BLOCK_C, BLOCK_P)
    hw = height * width
    mask_cp = mask_c[:, None] & mask_p[None, :]
    dv = tl.load(dout_ptr + (b * channels + offs_c[:, None]) * hw + (py * width + px)[None, :], mask=mask_cp,
                 other=0.0).to(tl.float32)
    x_rows = x_ptr + (b * channels + offs_c[:, None]) * hw
    for tap in tl.static_range(K * K):
        yy = py + tap // K - (K - 1) // 2
        xx = px + tap % K - (K - 1) // 2
        inside = mask_p & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        xv = tl.load(x_rows + (yy * width + xx)[None, :], mask=mask_c[:, None] & inside[None, :], other=0.0)
        dw = tl.sum(dv * xv.to(tl.float32), axis=0)
        tl.store(dw_ptr + ((b * groups + g) * K * K + tap) * hw + py * width + px,
                 dw.to(dw_ptr.dtype.element_ty), mask=mask_p)


def _launch(x: torch.Tensor, groups: int):
    bsz, channels, height, width = x.shape
    per_group = channels // groups
    grid = (bsz * groups, triton.cdiv(height * width, _BLOCK_P))
    return grid, (channels, groups, per_group, height, width), triton.next_power_of_2(per_group)


class _InvolutionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, kernel_size, groups):
        x, weight = x.contiguous(), weight.contiguous()
        grid, sizes, block_c = _launch(x, groups)
        out = torch.empty_like(x)
        _involution_gather_kernel[grid](x, weight, out, *sizes, K=kernel_size, TRANSPOSED=False,
                                        BLOCK_C=block_c, BLOCK_P=_BLOCK_P)
        ctx.save_for_backward(x, weight)
        ctx.kernel_size, ctx.groups = kernel_size, groups
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        dout = dout.contiguous()
        grid, sizes, block_c = _launch(x, ctx.groups)
        meta = dict(K=ctx.kernel_size, BLOCK_C=block_c, BLOCK_P=_BLOCK_P)
        dx, dw = torch.empty_like(x), torch.empty_like(weight)
        _involution_gather_kernel[grid](dout, weight, dx, *sizes, TRANSPOSED=True, **meta)
        _involution_dw_kernel[grid](dout, x, dw, *sizes, **meta)
        return dx, dw, None, None


def involution_triton(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, groups: int) -> torch.Tensor:
    """Per-pixel kernels ``weight`` applied to ``x`` (see the module docstring); inputs already checked."""
    return _InvolutionFn.apply(x, weight, kernel_size, groups)
