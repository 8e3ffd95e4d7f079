"""Selective scan on CPU: ours (fused numba pass) vs mambapy's pure-PyTorch Blelloch ``pscan`` (the peer
people reach for when mamba-ssm will not build), vs srcore's sequential reference, next to the
analytic floor. B=1, D=120, N=16, float32, with delta_bias, softplus, D and z as in DVMSR.

Each side is timed in its own phase (warm-up, a pause, then the repeats): torch's OpenMP threads
keep spinning for a while after a call and would otherwise steal the cores of the next side.

Floor: the L*D*N exponentials at the measured vectorised exp rate (torch.exp on a cache-sized
float32 tensor, all threads) plus the bytes that must cross memory once (inputs read, outputs
written) at the measured copy bandwidth. Forward+backward counts the exponentials twice (the
backward recomputes them) and the gradients' bytes.

Run: python bench/selective_scan.py [--lengths 4096 16384] [--skip-reference-above 16384]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F
from common import report, timeit

from srcore.ops import selective_scan

BATCH, DIM, STATE = 1, 120, 16
PAUSE_S = 0.5


def _inputs(length: int, requires_grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(BATCH, DIM, length, generator=g), torch.randn(BATCH, DIM, length, generator=g) * 0.5,
         -torch.rand(DIM, STATE, generator=g) * 4, torch.randn(BATCH, STATE, length, generator=g),
         torch.randn(BATCH, STATE, length, generator=g), torch.randn(DIM, generator=g),
         torch.randn(BATCH, DIM, length, generator=g), torch.randn(DIM, generator=g)]
    return [x.requires_grad_(requires_grad) for x in t]


def _ours(u, delta, A, B, C, D, z, bias):
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend="cpu")


def _reference(u, delta, A, B, C, D, z, bias):
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                          backend="reference")


def _mambapy(u, delta, A, B, C, D, z, bias):
    """mambapy's recipe (MambaBlock.ssm on CPU): softplus(delta + bias), its pscan ``selective_scan``,
    then y * silu(z). mambapy works in (B, L, D) layout; its inputs come in that layout (``_peer_layout``).
    """
    from mambapy.mamba import MambaBlock

    delta = F.softplus(delta + bias)
    y = MambaBlock.selective_scan(None, u, delta, A, B, C, D)  # does not use self
    return y * F.silu(z)


def _peer_layout(args: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, D, L) / (B, N, L) tensors as mambapy's (B, L, D) / (B, L, N) leaves."""
    u, delta, A, B, C, D, z, bias = args
    moved = [x.detach().transpose(1, 2).contiguous() for x in (u, delta, B, C, z)]
    out = [moved[0], moved[1], A.detach().clone(), moved[2], moved[3], D.detach().clone(), moved[4],
           bias.detach().clone()]
    return [x.requires_grad_(args[0].requires_grad) for x in out]


def _call(fn, args, backward: bool):
    y = fn(*args)
    if backward:
        y.sum().backward()
    return y


def _measure_rates() -> tuple[float, float]:
    """(copy bandwidth in bytes/s, exp rate in exponentials/s), both with all torch threads."""
    big = torch.empty(64 * 2**20 // 4)  # 64 MiB, well past the caches
    dst = torch.empty_like(big)
    copy_s = timeit(lambda: dst.copy_(big), repeats=5)
    small = torch.rand(1 << 18) * -10  # 1 MiB: stays in cache, so exp throughput is what is timed
    out = torch.empty_like(small)
    exp_s = timeit(lambda: torch.exp(small, out=out), repeats=50)
    return 2 * big.numel() * 4 / copy_s, small.numel() / exp_s


def _floor_s(length: int, backward: bool, copy_bw: float, exp_rate: float) -> float:
    bdl, bnl = BATCH * DIM * length * 4, BATCH * STATE * length * 4
    fwd_bytes = 3 * bdl + 2 * bnl + bdl  # u, delta, z, B, C in; y out
    n_exp = BATCH * DIM * length * STATE
    if not backward:
        return n_exp / exp_rate + fwd_bytes / copy_bw
    bwd_bytes = 4 * bdl + 2 * bnl + 3 * bdl + 2 * bnl  # u, delta, z, dy, B, C in; du, ddelta, dz, dB, dC out
    return 2 * n_exp / exp_rate + (fwd_bytes + bwd_bytes) / copy_bw


def _phase(fn, args_fn, backward: bool, repeats: int) -> float:
    """Warm-up, a pause for the previous side's threads to go idle, then the median of the repeats."""
    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        _call(fn, args_fn(), backward)
        time.sleep(PAUSE_S)
        args = args_fn()
        return timeit(lambda: _call(fn, args, backward), repeats=repeats, warmup=0)


def _max_diff(length: int) -> float:
    args = _inputs(length, False)
    with torch.no_grad():
        ours = _ours(*args)
        peer = _mambapy(*_peer_layout(args)).transpose(1, 2)
    return (ours - peer).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-reference-above", type=int, default=16384,
                    help="Do not time the (slow) sequential reference above this length.")
    args = ap.parse_args()
    copy_bw, exp_rate = _measure_rates()
    rows = []
    for length in args.lengths:
        for backward in (False, True):
            row = {"L": length, "pass": "fwd+bwd" if backward else "fwd"}
            ours_in = functools.partial(_inputs, length, backward)
            peer_in = functools.partial(lambda n, b: _peer_layout(_inputs(n, b)), length, backward)
            row["ours_ms"] = 1e3 * _phase(_ours, ours_in, backward, args.repeats)
            row["mambapy_ms"] = 1e3 * _phase(_mambapy, peer_in, backward, max(1, args.repeats // 2))
            if length <= args.skip_reference_above:
                row["reference_ms"] = 1e3 * _phase(_reference, ours_in, backward, 1)
            else:
                row["reference_ms"] = float("nan")
            row["x_vs_mambapy"] = row["mambapy_ms"] / row["ours_ms"]
            row["x_vs_reference"] = row["reference_ms"] / row["ours_ms"]
            row["floor_ms"] = 1e3 * _floor_s(length, backward, copy_bw, exp_rate)
            row["ours_over_floor"] = row["ours_ms"] / row["floor_ms"]
            if not backward:
                row["max_abs_diff_vs_mambapy"] = _max_diff(length)
            rows.append(row)
    report("selective_scan", rows,
           f"selective scan, B={BATCH} D={DIM} N={STATE}, CPU fp32, {torch.get_num_threads()} threads "
           f"(ms, median); copy {copy_bw / 1e9:.1f} GB/s, exp {exp_rate / 1e9:.2f} G/s")


if __name__ == "__main__":
    main()
