"""Selective scan on CPU: ours (fused numba pass) vs mambapy's pure-PyTorch Blelloch ``pscan`` (the peer
people reach for when mamba-ssm will not build), vs srcore's sequential reference, next to the
analytic floor. B=1, D=120, N=16, float32, with delta_bias, softplus, D and z as in DVMSR.

Each side is timed in its own phase (warm-up, a pause, then the repeats; bench/phases.py), in wall
time and in process CPU time (the fair figure on a shared machine, and with ``--threads 1``).

Floor: the L*D*N exponentials at the measured vectorised exp rate (torch.exp on a cache-sized
float32 tensor, all threads) plus the bytes that must cross memory once (inputs read, outputs
written) at the measured copy bandwidth. Forward+backward counts the exponentials twice (the
backward recomputes them) and the gradients' bytes.

Run: python bench/selective_scan.py [--lengths 4096 16384] [--threads 1] [--skip-reference-above 16384]
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from common import report
from phases import phase, times

from srcore.ops import selective_scan

BATCH, DIM, STATE = 1, 120, 16


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


def _measure_rates() -> tuple[tuple[float, float], tuple[float, float]]:
    """Copy bandwidth (bytes/s) and exp rate (exponentials/s) with all torch threads, each as
    (per wall second, per CPU second)."""
    big = torch.empty(64 * 2**20 // 4)  # 64 MiB, well past the caches
    dst = torch.empty_like(big)
    dst.copy_(big)
    copy_s = times(lambda: dst.copy_(big), repeats=5)
    small = torch.rand(1 << 20) * -10  # 4 MiB: exp throughput, not memory, is what is timed
    out = torch.empty_like(small)
    torch.exp(small, out=out)
    exp_s = times(lambda: torch.exp(small, out=out), repeats=30)
    return tuple(2 * big.numel() * 4 / s for s in copy_s), tuple(small.numel() / s for s in exp_s)


def _floor_s(length: int, backward: bool, copy_bw: float, exp_rate: float) -> float:
    bdl, bnl = BATCH * DIM * length * 4, BATCH * STATE * length * 4
    fwd_bytes = 3 * bdl + 2 * bnl + bdl  # u, delta, z, B, C in; y out
    n_exp = BATCH * DIM * length * STATE
    if not backward:
        return n_exp / exp_rate + fwd_bytes / copy_bw
    bwd_bytes = 4 * bdl + 2 * bnl + 3 * bdl + 2 * bnl  # u, delta, z, dy, B, C in; du, ddelta, dz, dB, dC out
    return 2 * n_exp / exp_rate + (fwd_bytes + bwd_bytes) / copy_bw


def _phase(fn, args_fn, backward: bool, repeats: int) -> tuple[float, float]:
    """Wall and CPU ms per call of one side, timed in its own phase (see bench/phases.py)."""
    with torch.enable_grad() if backward else torch.no_grad():
        args = args_fn()
        wall, cpu = phase(lambda: _call(fn, args, backward), repeats)
    return 1e3 * wall, 1e3 * cpu


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
    ap.add_argument("--threads", type=int, default=0,
                    help="torch and numba threads (0: leave as they are); records as selective_scan_t<n>.")
    ap.add_argument("--skip-reference-above", type=int, default=16384,
                    help="Do not time the (slow) sequential reference above this length.")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    copy_bw, exp_rate = _measure_rates()
    rows = []
    for length in args.lengths:
        for backward in (False, True):
            row = {"L": length, "pass": "fwd+bwd" if backward else "fwd"}
            ours_in = functools.partial(_inputs, length, backward)
            peer_in = functools.partial(lambda n, b: _peer_layout(_inputs(n, b)), length, backward)
            row["ours_ms"], row["ours_cpu_ms"] = _phase(_ours, ours_in, backward, args.repeats)
            row["mambapy_ms"], row["mambapy_cpu_ms"] = _phase(_mambapy, peer_in, backward,
                                                              max(1, args.repeats // 2))
            if length <= args.skip_reference_above:
                row["reference_ms"], _ = _phase(_reference, ours_in, backward, 1)
            else:
                row["reference_ms"] = float("nan")
            row["x_vs_mambapy"] = row["mambapy_ms"] / row["ours_ms"]
            row["x_vs_mambapy_cpu"] = row["mambapy_cpu_ms"] / row["ours_cpu_ms"]
            row["x_vs_reference"] = row["reference_ms"] / row["ours_ms"]
            row["floor_ms"] = 1e3 * _floor_s(length, backward, copy_bw[0], exp_rate[0])
            row["ours_over_floor"] = row["ours_ms"] / row["floor_ms"]
            row["floor_cpu_ms"] = 1e3 * _floor_s(length, backward, copy_bw[1], exp_rate[1])
            row["ours_cpu_over_floor_cpu"] = row["ours_cpu_ms"] / row["floor_cpu_ms"]
            if not backward:
                row["max_abs_diff_vs_mambapy"] = _max_diff(length)
            rows.append(row)
    title = (f"selective scan, B={BATCH} D={DIM} N={STATE}, CPU fp32, {torch.get_num_threads()} threads "
             f"(ms, median); per wall second: copy {copy_bw[0] / 1e9:.1f} GB/s, "
             f"exp {exp_rate[0] / 1e9:.2f} G/s")
    report(f"selective_scan_t{args.threads}" if args.threads else "selective_scan", rows, title)


if __name__ == "__main__":
    main()
