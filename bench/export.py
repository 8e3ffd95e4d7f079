"""Exported students on CPU: onnxruntime vs PyTorch eager vs TorchScript, latency per 256x256 LR image.

Each model is exported with `srcore.export.export_model` (so every timed file passed the parity
check; its max abs diff is in the table), then the three runtimes are timed in the same run on the
same input. Ratios are eager latency / runtime latency (> 1: the runtime is faster). Random
weights (perturbed away from the initialisation, so the scans do not run on the init's constants):
latency does not depend on them, and parity is checked either way. ``--threads`` applies to torch,
numba and onnxruntime alike. Each exported row also gives the file's size and the export time
(tracing, writing and the parity check on three sizes).

Every student exports with a dynamic size (SRConvNet's ONNX graph at the image's size), so one
call runs the whole image; the Mamba students' (dvmsr, mair_t, mair_s) selective scan runs as a
loop over chunks inside the graph (``srcore.ops.scan_loop``). A model that cannot be exported gets
a row saying why.

The hardware floor: each row also says what fraction of the CPU's fp32 peak it reaches
(2 FLOPs per multiply-add as ``srcore.metrics.efficiency.count_flops`` counts them, over the
latency). The peak is ``--peak-gflops`` or, by default, cores x clock x 32 (two 256-bit FMA
units, AVX2) from /proc/cpuinfo; a runtime can be at most 1 / (eager's fraction) times eager.

Run: python bench/export.py [--models rlfn ibmdn srconvnet dvmsr mair_t mair_s] [--size 256] [--repeats 3]
     [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import report, timeit

from srcore.errors import SrcoreError
from srcore.export import ExportedModel, ExportOptions, export_model, load_exported
from srcore.export.api import FIXED_SIZE_ONLY
from srcore.inference import upscale_tensor
from srcore.metrics.efficiency import count_flops
from srcore.models import build

STUDENTS = ("rlfn", "ibmdn", "srconvnet", "dvmsr", "mair_t", "mair_s")
FORMATS = (("onnx", ".onnx"), ("torchscript", ".pt"))


def _graph_size(model, fmt: str, size: int) -> tuple[int, int] | None:
    """Fixed graph size for this export: the image for SRConvNet's ONNX FFTs, else dynamic."""
    return (size, size) if (fmt, model.arch) in FIXED_SIZE_ONLY else None


def default_peak_gflops(threads: int) -> float:
    """fp32 peak of ``threads`` cores: clock (MHz, /proc/cpuinfo) x 32 FLOPs a cycle (AVX2, 2 FMA units)."""
    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))
    return threads * mhz * 32 / 1e3


def _bench_model(name: str, scale: int, size: int, repeats: int, threads: int, tmp: Path,
                 peak_gflops: float) -> list[dict]:
    torch.manual_seed(0)
    model = build(name, scale).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.rand(1, 3, size, size)
    gflop = 2 * count_flops(model, x)[0] / 1e9
    params_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    runs: dict[str, tuple[str, float, float, float, ExportedModel | None]] = {}
    for fmt, suffix in FORMATS:
        fixed = _graph_size(model, fmt, size)
        out = tmp / f"{name}{suffix}"
        t0 = time.perf_counter()
        try:
            rep = export_model(model, out, ExportOptions(format=fmt, tile=fixed))
        except SrcoreError as exc:
            runs[fmt] = (f"not exported: {exc}", float("nan"), float("nan"), float("nan"), None)
            continue
        seconds = time.perf_counter() - t0
        graph = f"{size}x{size}" if fixed else "dynamic"
        runs[fmt] = (graph, rep.max_abs_diff, out.stat().st_size / 1e6, seconds,
                     load_exported(out, threads=threads or None))
    with torch.no_grad():
        eager = timeit(lambda: upscale_tensor(model, x), repeats=repeats)
    rows = [{"model": name, "format": "pytorch eager", "graph": "dynamic", "file_mb": params_mb,
             "export_s": 0.0, "max_abs_diff": 0.0, "ms": eager * 1e3, "ratio": 1.0,
             "of_peak": gflop / eager / peak_gflops}]
    for fmt, (what, diff, mb, seconds, run) in runs.items():
        row = {"model": name, "format": fmt, "graph": what[:160], "file_mb": mb, "export_s": seconds,
               "max_abs_diff": diff, "ms": float("nan"), "ratio": float("nan"), "of_peak": float("nan")}
        if run is not None:
            sec = timeit(lambda run=run: upscale_tensor(run, x, tile=run.plan()), repeats=repeats)
            row.update(ms=sec * 1e3, ratio=eager / sec, of_peak=gflop / sec / peak_gflops)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(STUDENTS))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="LR side")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0,
                   help="torch, numba and onnxruntime threads (0: their default)")
    p.add_argument("--name", default="export", help="results file: bench/results/<name>.json")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="fp32 peak of the cores used (default: cores x clock x 32, AVX2 FMA)")
    args = p.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    peak = args.peak_gflops or default_peak_gflops(torch.get_num_threads())
    rows = []
    title = (f"latency per {args.size}x{args.size} LR image, x{args.scale}, CPU "
             f"(of_peak: fraction of {peak:.0f} GFLOP/s)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:  # the table is written after each model, so a cut-short run keeps its rows
            rows += _bench_model(name, args.scale, args.size, args.repeats, args.threads, Path(tmp), peak)
            report(args.name, rows, title)


if __name__ == "__main__":
    main()
