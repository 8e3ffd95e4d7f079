"""DVMSR CPU inference: ours (compiled chunked scan) vs the same model on the sequential
reference scan (and mamba-ssm's reference path when installed), same weights, same input.

Run: python bench/infer_dvmsr.py [--sizes 64 128]
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from common import report, timeit

from srcore.models import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build("dvmsr", 4).eval()
    rows = []
    for size in args.sizes:
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            t_ours = timeit(lambda: model.set_scan_backend("cpu")(x), repeats=3)
            y_ours = model(x)
            t_ref = timeit(lambda: model.set_scan_backend("reference")(x), repeats=1, warmup=0)
            y_ref = model(x)
        row = {"lr_size": f"{size}x{size}", "ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3,
               "x_vs_reference": t_ref / t_ours, "max_abs_diff": (y_ours - y_ref).abs().max().item()}
        if importlib.util.find_spec("mamba_ssm") is not None:
            row["mamba_ssm"] = "installed (CUDA path only; CPU uses the same reference recurrence)"
        rows.append(row)
    model.set_scan_backend(None)
    report("infer_dvmsr", rows, "DVMSR x4 CPU forward latency (median)")


if __name__ == "__main__":
    main()
