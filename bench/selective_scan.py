"""Selective scan on CPU: ours (chunked compiled kernels) vs the sequential reference, and vs
mamba-ssm's ``selective_scan_ref`` when it is installed. B=1, D=120, N=16.

Run: python bench/selective_scan.py [--lengths 4096 16384 65536] [--skip-reference-above 16384]
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from common import report, timeit

from srcore.metrics.efficiency import peak_rss_mb
from srcore.ops import selective_scan


def _inputs(length: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    b, d, n = 1, 120, 16
    t = [torch.randn(b, d, length, generator=g), torch.randn(b, d, length, generator=g) * 0.5,
         -torch.rand(d, n, generator=g) * 4, torch.randn(b, n, length, generator=g),
         torch.randn(b, n, length, generator=g), torch.randn(d, generator=g), torch.randn(b, d, length, generator=g),
         torch.randn(d, generator=g)]
    return [x.requires_grad_(requires_grad) for x in t]


def _call(fn, args, backward: bool):
    u, delta, A, B, C, D, z, bias = args
    y = fn(u, delta, A, B, C, D, z, bias)
    if backward:
        y.sum().backward()
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--skip-reference-above", type=int, default=65536,
                    help="Do not time the (slow) sequential references above this length.")
    args = ap.parse_args()
    peers = {
        "ours": lambda *a: selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True, backend="cpu"),
        "reference": lambda *a: selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True,
                                               backend="reference"),
    }
    if importlib.util.find_spec("mamba_ssm") is not None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

        peers["mamba_ssm_ref"] = lambda *a: selective_scan_ref(*a[:5], D=a[5], z=a[6], delta_bias=a[7],
                                                               delta_softplus=True)
    rows = []
    for length in args.lengths:
        for backward in (False, True):
            row = {"L": length, "pass": "fwd+bwd" if backward else "fwd"}
            for name, fn in peers.items():
                if name != "ours" and length > args.skip_reference_above:
                    row[f"{name}_s"] = float("nan")
                    continue
                inputs = _inputs(length, backward)
                ctx = torch.enable_grad() if backward else torch.no_grad()
                with ctx:
                    reps = 3 if name == "ours" else 1
                    row[f"{name}_s"] = timeit(lambda: _call(fn, inputs, backward), repeats=reps,
                                              warmup=1 if name == "ours" else 0)
                    if name == "ours":
                        row["ours_peak_mb"] = peak_rss_mb(lambda: _call(fn, _inputs(length, backward), backward))
            row["x_vs_reference"] = row["reference_s"] / row["ours_s"]
            if "mamba_ssm_ref_s" in row:
                row["x_vs_mamba_ref"] = row["mamba_ssm_ref_s"] / row["ours_s"]
            row["BDL_mb"] = 120 * length * 4 / 2**20
            row["BDLN_mb"] = 120 * length * 16 * 4 / 2**20
            rows.append(row)
    report("selective_scan", rows, "selective scan, B=1 D=120 N=16, CPU (seconds, median)")


if __name__ == "__main__":
    main()
