"""Exported students on CPU: onnxruntime vs PyTorch eager vs TorchScript, latency per 256x256 LR image.

Each model is exported with `srcore.export.export_model` (so every timed file passed the parity
check; its max abs diff is in the table), then the three runtimes are timed in the same run on the
same input. Ratios are eager latency / runtime latency (> 1: the runtime is faster). Target:
onnxruntime >= 1.5x eager for the CNN students. Random weights: latency does not depend
on them, and parity is checked either way. ``--threads`` applies to torch and onnxruntime alike.

CNN students export with a dynamic size (SRConvNet's ONNX graph at the image's size), so one call
runs the whole image. Mamba students (dvmsr, mair_t, mair_s) export only at a fixed tile (--tile
H W, default 64 64), where the selective scan's blocked closed form unrolls into the graph; for
them every runtime, eager included, runs the same tiles of the 256x256 image, so the ratios
compare runtimes, not tilings. A model that cannot be exported gets a row saying why.

The hardware floor: each row also says what fraction of the CPU's fp32 peak it reaches
(2 FLOPs per multiply-add as ``srcore.metrics.efficiency.count_flops`` counts them, over the
latency). The peak is ``--peak-gflops`` or, by default, cores x clock x 32 (two 256-bit FMA
units, AVX2) from /proc/cpuinfo; a runtime can be at most 1 / (eager's fraction) times eager.

Run: python bench/export.py [--models rlfn ibmdn srconvnet] [--size 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import report, timeit

from srcore.errors import SrcoreError
from srcore.export import ExportedModel, ExportOptions, export_model, load_exported
from srcore.export.api import FIXED_SIZE_ONLY
from srcore.export.runtime import ExportMeta
from srcore.inference import upscale_tensor
from srcore.metrics.efficiency import count_flops
from srcore.models import build

CNN_STUDENTS = ("rlfn", "ibmdn", "srconvnet")
FORMATS = (("onnx", ".onnx"), ("torchscript", ".pt"))


def _graph_size(model, fmt: str, size: int, tile: tuple[int, int]) -> tuple[int, int] | None:
    """Fixed graph size for this export: the Mamba tile, the image for SRConvNet's ONNX FFTs, else dynamic."""
    if (fmt, model.arch) not in FIXED_SIZE_ONLY:
        return None
    return tile if model.arch in ("dvmsr", "mair") else (size, size)


def default_peak_gflops(threads: int) -> float:
    """fp32 peak of ``threads`` cores: clock (MHz, /proc/cpuinfo) x 32 FLOPs a cycle (AVX2, 2 FMA units)."""
    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))
    return threads * mhz * 32 / 1e3


def _bench_model(name: str, scale: int, size: int, tile: tuple[int, int], repeats: int, threads: int,
                 tmp: Path, peak_gflops: float) -> list[dict]:
    torch.manual_seed(0)
    model = build(name, scale).eval()
    x = torch.rand(1, 3, size, size)
    gflop = 2 * count_flops(model, x)[0] / 1e9
    mamba = model.arch in ("dvmsr", "mair")
    graph = f"tiles {tile[0]}x{tile[1]}" if mamba else f"{size}x{size}"
    runs: dict[str, tuple[str, float, ExportedModel]] = {}
    for fmt, suffix in FORMATS:
        fixed = _graph_size(model, fmt, size, tile)
        try:
            rep = export_model(model, tmp / f"{name}{suffix}", ExportOptions(format=fmt, tile=fixed))
        except SrcoreError as exc:
            runs[fmt] = (f"not exported: {exc}", float("nan"), None)
            continue
        runs[fmt] = (graph if fixed else f"{size}x{size} (dynamic)", rep.max_abs_diff,
                     load_exported(tmp / f"{name}{suffix}", threads=threads or None))
    # Eager runs what the exports run: the whole image, or the tiles of the fixed-size graph.
    plan = next((r.plan() for _, _, r in runs.values() if r is not None and r.meta.size and mamba), None)
    eager_run = (ExportedModel("pytorch", ExportMeta("pytorch", model.arch, scale, tile, "float32"), model)
                 if plan else model)
    eager = timeit(lambda: upscale_tensor(eager_run, x, tile=plan), repeats=repeats)
    rows = [{"model": name, "format": "pytorch eager", "graph": graph, "max_abs_diff": 0.0,
             "ms": eager * 1e3, "ratio": 1.0, "of_peak": gflop / eager / peak_gflops}]
    for fmt, (what, diff, run) in runs.items():
        if run is None:
            rows.append({"model": name, "format": fmt, "graph": what[:160], "max_abs_diff": diff,
                         "ms": float("nan"), "ratio": float("nan"), "of_peak": float("nan")})
            continue
        sec = timeit(lambda run=run: upscale_tensor(run, x, tile=run.plan()), repeats=repeats)
        rows.append({"model": name, "format": fmt, "graph": what, "max_abs_diff": diff, "ms": sec * 1e3,
                     "ratio": eager / sec, "of_peak": gflop / sec / peak_gflops})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CNN_STUDENTS))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="LR side")
    p.add_argument("--tile", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                   help="fixed graph size of the Mamba exports")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: their default)")
    p.add_argument("--name", default="export", help="results file: bench/results/<name>.json")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="fp32 peak of the cores used (default: cores x clock x 32, AVX2 FMA)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = args.peak_gflops or default_peak_gflops(torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += _bench_model(name, args.scale, args.size, tuple(args.tile), args.repeats, args.threads,
                                 Path(tmp), peak)
    report(args.name, rows, f"latency per {args.size}x{args.size} LR image, x{args.scale}, CPU "
                            f"(of_peak: fraction of {peak:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
