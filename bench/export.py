"""Exported students on CPU: onnxruntime vs PyTorch eager vs TorchScript, latency per 256x256 LR image.

Each model is exported with `srcore.export.export_model` (so every timed file passed the parity
check; its max abs diff is in the table), then the three runtimes are timed in the same run on the
same input. Ratios are eager latency / runtime latency (> 1: the runtime is faster). Target:
onnxruntime >= 1.5x eager for the CNN students. Random weights: latency does not depend
on them, and parity is checked either way.

Mamba students (dvmsr, mair_*) export only at a fixed size, where the selective scan's blocked
closed form unrolls into the graph; pass them with --models and --tile (slow to export on CPU).

Run: python bench/export.py [--models rlfn ibmdn srconvnet] [--size 256] [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import report, timeit

from srcore.export import ExportOptions, export_model, load_exported
from srcore.export.api import FIXED_SIZE_ONLY
from srcore.models import build

CNN_STUDENTS = ("rlfn", "ibmdn", "srconvnet")


def _bench_model(name: str, scale: int, size: int, tile: int | None, repeats: int, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build(name, scale).eval()
    x = torch.rand(1, 3, size, size)
    rows = []
    with torch.inference_mode():
        eager = timeit(lambda: model(x), repeats=repeats)
    rows.append({"model": name, "format": "pytorch eager", "max_abs_diff": 0.0, "ms": eager * 1e3,
                 "ratio": 1.0})
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        # Shape-dependent exporters (srconvnet's FFTs in ONNX, the scans) get a graph of the input size.
        fixed = tile or (size if (fmt, model.arch) in FIXED_SIZE_ONLY else None)
        out = tmp / f"{name}{suffix}"
        rep = export_model(model, out, ExportOptions(format=fmt, tile=fixed))
        # The input is the graph's size (or the graph is dynamic): one call, no tiling.
        run = load_exported(out)
        sec = timeit(lambda run=run: run(x), repeats=repeats)
        rows.append({"model": name, "format": fmt + (f" ({fixed}x{fixed})" if fixed else ""),
                     "max_abs_diff": rep.max_abs_diff, "ms": sec * 1e3, "ratio": eager / sec})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CNN_STUDENTS))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="LR side")
    p.add_argument("--tile", type=int, default=None, help="fixed graph size for every export (Mamba models)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += _bench_model(name, args.scale, args.size, args.tile, args.repeats, Path(tmp))
    report("export", rows, f"latency per {args.size}x{args.size} LR image, x{args.scale}, CPU")


if __name__ == "__main__":
    main()
