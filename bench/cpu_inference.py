"""Mamba students on CPU, eager PyTorch: latency per LR image as a multiple of RLFN's, same run.

RLFN (a plain CNN that runs near the CPU's fp32 peak) is the yardstick: each model is timed on the
same input, interleaved with RLFN round by round so that machine load hits both alike, and the
table gives the median of each model's per-round latency ratio to RLFN. ``of_peak``: the fraction of
the cores' fp32 peak (2 FLOPs per multiply-add as ``srcore.metrics.efficiency.count_flops`` counts
them, selective scan included, over the median latency); the peak is ``--peak-gflops`` or cores x
clock x 32 (AVX2, two FMA units). Targets at 256x256, x4, 2 threads: DVMSR <= 2.5x RLFN, MaIR-T <= 8x.
On a machine that other jobs share, wall time measures the load as much as the model: the
process CPU time per forward (``cpu_ms``, summed over threads, and its ratio to RLFN's) is given
beside it.

Run: python bench/cpu_inference.py [--models dvmsr mair_t] [--size 256] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import torch
from common import report
from export import default_peak_gflops

from srcore.metrics.efficiency import count_flops
from srcore.models import build


def _once(model, x) -> tuple[float, float]:
    """Wall and process CPU seconds of one forward."""
    t0, c0 = time.perf_counter(), time.process_time()
    model(x)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["dvmsr", "mair_t"])
    p.add_argument("--peer", default="rlfn")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="LR side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    p.add_argument("--peak-gflops", type=float, default=None)
    p.add_argument("--name", default="cpu_inference", help="results file: bench/results/<name>.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    peak = args.peak_gflops or default_peak_gflops(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size)
    names = [args.peer, *args.models]
    models = {n: build(n, args.scale).eval() for n in names}
    gflop = {n: 2 * count_flops(m, x)[0] / 1e9 for n, m in models.items()}
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with torch.inference_mode():
        for m in models.values():  # warm-up: kernels compiled, caches and allocator filled
            m(x)
        for _ in range(args.rounds):
            for n, m in models.items():
                times[n].append(_once(m, x))
    rows = []
    for n in names:
        ratio = [statistics.median(t[i] / r[i] for t, r in zip(times[n], times[args.peer], strict=True))
                 for i in (0, 1)]
        wall, cpu = (statistics.median(t[i] for t in times[n]) for i in (0, 1))
        rows.append({"model": n, "ms": wall * 1e3, f"x_{args.peer}": ratio[0], "cpu_ms": cpu * 1e3,
                     f"x_{args.peer}_cpu": ratio[1], "gflop": gflop[n], "of_peak": gflop[n] / wall / peak})
    report(args.name, rows, f"eager CPU latency, {args.size}x{args.size} LR, x{args.scale}, {args.threads} "
                            f"threads (of_peak: fraction of {peak:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
