"""Every GPU-specific check in one command, for the day a GPU is lent (``make gpu-check``).

On one CUDA device, in this order, each step timed and recorded (a failing step does not stop the
others):

1. ``device``: the GPU, its compute capability and bf16 support, torch/CUDA/Triton versions, and
   whether mamba-ssm imports.
2. ``kernel_parity``: srcore's Triton kernels compiled on the GPU against the float64 references
   (the cases ``tests/triton_interpreter_cases.py`` runs under the interpreter on CPU: scan forward,
   last state and every gradient, the fused NSS scan, MaIR's VMM, involution; bf16 and fp16 inputs),
   and mamba-ssm's kernel against the Triton one when mamba-ssm is installed.
3. ``kernels_bench``: ``bench/kernels_gpu.py`` (Triton vs mamba-ssm vs torch, fraction of HBM peak).
4. ``train_amp_compile``: 200 steps of the tiny profile's teacher on the GPU, bf16 autocast and
   ``torch.compile`` on, from the embedded sample: samples/s, final loss, validation PSNR-Y.
5. ``dvmsr_set5``: the official DVMSR x4 on Set5 on the GPU against the CPU (PSNR-Y within 0.01 dB),
   when ``../shared`` has the weights and images.

Writes ``bench/results/gpu_check.json`` and ``gpu_check.md`` and prints where. Without a CUDA device
it refuses in seconds with one line (exit 2). Exit 1 when a step failed.

Run: python bench/gpu_check.py [--steps 200] [--timeout 480]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared"
# tolerances: float32 kernels against float64 references (as the CPU tests); half inputs as
# tests/test_selective_scan.py justifies them; the GPU and CPU PSNR of one model (the 0.01 dB)
KERNEL_TOL = 1e-4
HALF_TOL = {"dtype/bf16": 1e-2, "dtype/fp16": 2e-3}
PSNR_TOL_DB = 0.01


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"gpu-check: no CUDA device here (torch {torch.__version__}, {build}); run `make gpu-check` "
            "on a machine with an NVIDIA GPU and a CUDA build of torch")


def device_step() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import mamba_ssm

        mamba = getattr(mamba_ssm, "__version__", "installed")
    except ImportError:
        mamba = None
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "mamba_ssm": mamba, "ok": triton_version is not None}


def kernel_parity_step() -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from triton_interpreter_cases import run_all

    errors = run_all("cuda")
    worst = {case: max(v for k, v in errs.items() if k != "dtype_kept") for case, errs in errors.items()}
    failed = [c for c, e in worst.items() if e > HALF_TOL.get(c, KERNEL_TOL)]
    failed += [c for c, errs in errors.items() if errs.get("dtype_kept", 1.0) != 1.0]
    out: dict[str, Any] = {"worst_rel_err": worst, "failed": sorted(set(failed))}
    from srcore.ops.selective_scan import available_backends, selective_scan

    if "cuda" in available_backends("cuda"):  # mamba-ssm's kernel against ours
        g = torch.Generator(device="cuda").manual_seed(0)
        u, delta = (torch.randn(2, 64, 1024, device="cuda", generator=g) for _ in range(2))
        delta = delta.abs() * 0.1
        A = -torch.rand(64, 16, device="cuda", generator=g)
        B, C = (torch.randn(2, 16, 1024, device="cuda", generator=g) for _ in range(2))
        y_m = selective_scan(u, delta, A, B, C, backend="cuda")
        y_t = selective_scan(u, delta, A, B, C, backend="triton")
        out["mamba_vs_triton_rel_err"] = ((y_m - y_t).abs().max() / y_t.abs().max()).item()
        if out["mamba_vs_triton_rel_err"] > KERNEL_TOL:
            out["failed"].append("mamba_vs_triton")
    out["ok"] = not out["failed"]
    return out


def kernels_bench_step(timeout: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels_gpu.py"), "--repeats", "10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tables = {}
    for name in ("kernels_gpu_scan", "kernels_gpu_nss", "kernels_gpu_involution"):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            tables[name] = json.loads(path.read_text())["rows"]
    return {"exit": proc.returncode, "tables": tables, "stderr_tail": proc.stderr[-1500:],
            "ok": proc.returncode == 0 and bool(tables)}


def train_step(steps: int) -> dict[str, Any]:
    from srcore.config import load_params
    from srcore.data.prepare import prepare
    from srcore.data.sample import write_sample
    from srcore.train.runner import run_stage

    with tempfile.TemporaryDirectory(prefix="srcore-gpu-check-") as tmp:
        write_sample(Path(tmp) / "sample")
        overrides = {"prepare.input": str(Path(tmp) / "sample" / "train"),
                     "prepare.out": str(Path(tmp) / "p"),
                     "prepare.scales": [4], "teacher.steps": steps, "teacher.val_every": steps,
                     "teacher.amp": "bf16", "teacher.compile": True, "teacher.val_dataset": "embedded",
                     "teacher.name": "gpu-check", "teacher.ray.use_gpu": True, "teacher.ray.num_workers": 1,
                     "teacher.ray.cpus_per_worker": 1, "teacher.ray.storage_path": str(Path(tmp) / "runs")}
        params = load_params(ROOT / "params.yaml", overrides, profile="tiny")
        prepare(params.prepare)
        result = run_stage(params, "teacher")
    m = result.metrics
    return {"steps": m.get("step"), "samples_per_s": m.get("samples_per_s"), "loss": m.get("loss"),
            "val_psnr_y": m.get("val_psnr_y"), "ok": m.get("step") == steps}


def dvmsr_set5_step() -> dict[str, Any]:
    weights, root = SHARED / "weights" / "dvmsr_ntire2024_x4.pth", SHARED / "data" / "benchmarks"
    if not (weights.is_file() and (root / "Set5").is_dir()):
        return {"skipped": f"{weights} or {root / 'Set5'} not found", "ok": True}
    from srcore.evaluation import evaluate_dataset
    from srcore.models import load_model

    scores = {}
    for device in ("cuda", "cpu"):
        model = load_model(weights, name="dvmsr", scale=4).to(device).eval()
        scores[device] = evaluate_dataset(model, "Set5", 4, root, device=device).psnr_y
    diff = abs(scores["cuda"] - scores["cpu"])
    return {"psnr_y_cuda": scores["cuda"], "psnr_y_cpu": scores["cpu"], "diff_db": diff,
            "ok": diff <= PSNR_TOL_DB}


def run_step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # one broken step must not hide the others' results
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-3000:]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: {'ok' if out['ok'] else 'FAILED'} ({out['seconds']} s)", flush=True)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['steps']['device'].get('name', '?')}", "",
             "| step | ok | seconds | result |", "|---|---|---|---|"]
    for name, out in report["steps"].items():
        shown = {k: v for k, v in out.items() if k not in ("ok", "seconds", "traceback", "tables")}
        lines.append(f"| {name} | {'yes' if out['ok'] else '**no**'} | {out['seconds']} | "
                     f"`{json.dumps(shown, default=str)[:400]}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps with amp and compile")
    ap.add_argument("--timeout", type=float, default=180, help="seconds for bench/kernels_gpu.py")
    args = ap.parse_args()
    reason = no_gpu_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter
    steps = {"device": run_step("device", device_step),
             "kernel_parity": run_step("kernel_parity", kernel_parity_step),
             "kernels_bench": run_step("kernels_bench", lambda: kernels_bench_step(args.timeout)),
             "train_amp_compile": run_step("train_amp_compile", lambda: train_step(args.steps)),
             "dvmsr_set5": run_step("dvmsr_set5", dvmsr_set5_step)}
    report = {"machine": platform.node(), "python": platform.python_version(), "steps": steps}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "gpu_check.md").write_text(markdown(report))
    print(f"report: {RESULTS / 'gpu_check.json'} and {RESULTS / 'gpu_check.md'}")
    return 0 if all(s["ok"] for s in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
