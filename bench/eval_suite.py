"""Evaluation wall time: our worker pool vs one process vs a BasicSR-style loop, same run.

Bicubic and RLFN (official NTIRE weights from ``../shared/weights``) over Set5 + Set14 at x4
(``../shared/data/benchmarks``). The LR cache is warmed first, so every side reads the same PNGs;
each side is timed in its own phase. The BasicSR-style loop is sequential: read HR and LR with
OpenCV, run the model, ``tensor2img``-style rounding, PSNR-Y and BasicSR's OpenCV SSIM-Y (the
formula re-stated in bench/metrics.py). Needs the ``bench`` extra (opencv).

The three sides run in turn, ``--rounds`` times, every other round in reverse order; each side's
best round is reported, and the first round of the pool separately (it carries the start of any
worker processes and, in this process, numba's first use; the peer's first round carries OpenCV's
import). ``pool_started``: whether our pool side started worker processes (it does only for work
that repays their start).
Run: python bench/eval_suite.py [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, report
from metrics import basicsr_ssim

from srcore.data.benchmarks import benchmark_sources, load_pair
from srcore.evaluation import evaluate_dataset
from srcore.evaluation.pool import running_pool, shutdown_pool
from srcore.models import build, load_model

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "benchmarks"
WEIGHTS = SHARED / "weights" / "rlfn_ntire2024_x4.pth"
SETS = ("Set5", "Set14")
SCALE = 4


def _basicsr_y(img_bgr: np.ndarray) -> np.ndarray:
    """BasicSR's ``bgr2ycbcr(img / 255., y_only=True) * 255`` on a uint8 BGR image."""
    return (img_bgr.astype(np.float64) / 255.0) @ np.array([24.966, 128.553, 65.481]) + 16.0


def basicsr_loop(model: torch.nn.Module, cache: Path) -> dict[str, float]:
    """Sequential evaluation the way BasicSR's validation does it, on the same HR/LR files."""
    import cv2

    means = {}
    for name in SETS:
        psnrs, ssims = [], []
        for src in benchmark_sources(name, DATA):
            hr_bgr = cv2.imread(str(src.path), cv2.IMREAD_COLOR)
            h, w = hr_bgr.shape[:2]
            hr_bgr = hr_bgr[:h - h % SCALE, :w - w % SCALE]
            lr_path = next((cache / name / f"x{SCALE}").glob(f"{src.stem}.*.png"))
            lr = cv2.imread(str(lr_path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
            with torch.no_grad():
                out = model(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None])
            sr = (out[0].clamp(0, 1).numpy().transpose(1, 2, 0)[..., ::-1] * 255.0).round().astype(np.uint8)
            crop = (slice(SCALE, -SCALE), slice(SCALE, -SCALE))
            ya, yb = _basicsr_y(sr)[crop], _basicsr_y(hr_bgr)[crop]
            psnrs.append(10 * np.log10(255.0**2 / np.mean((ya - yb) ** 2)))
            ssims.append(basicsr_ssim(ya, yb))
        means[f"{name}_psnr"], means[f"{name}_ssim"] = float(np.mean(psnrs)), float(np.mean(ssims))
    return means


def ours(model: torch.nn.Module, workers: int) -> dict[str, float]:
    means = {}
    for name in SETS:
        r = evaluate_dataset(model, name, SCALE, DATA, workers=workers)
        means[f"{name}_psnr"], means[f"{name}_ssim"] = r.psnr_y, r.ssim_y
    return means


def _timed(fn) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    values = fn()
    return time.perf_counter() - t0, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this bench needs ../shared/data/benchmarks")
    cache = Path(os.environ.setdefault("SRCORE_CACHE", str(ROOT / "bench" / "results" / "lr-cache")))
    models = {"bicubic": build("bicubic", SCALE)}
    if WEIGHTS.is_file():
        models["rlfn"] = load_model(WEIGHTS, name="rlfn", scale=SCALE)
    for name in SETS:  # warm the LR cache so every side reads the same files
        for src in benchmark_sources(name, DATA):
            load_pair(src, SCALE, cache)
    rows = []
    for label, model in models.items():
        model.eval()
        shutdown_pool()  # each model's first round starts from no worker processes
        sides = {"pool": lambda m=model: ours(m, args.workers), "one_proc": lambda m=model: ours(m, 1),
                 "basicsr_loop": lambda m=model: basicsr_loop(m, cache)}
        times: dict[str, list[float]] = {k: [] for k in sides}
        values: dict[str, dict[str, float]] = {}
        order = list(sides)
        for r in range(args.rounds):  # each side in its own phase; every other round reversed, so that
            for side in order if r % 2 == 0 else order[::-1]:  # no side always runs after the same one
                t, values[side] = _timed(sides[side])
                times[side].append(t)
        best = {k: min(v) for k, v in times.items()}
        v_one, v_peer = values["one_proc"], values["basicsr_loop"]
        rows.append({"model": label, "images": 19, "workers": args.workers, "pool_first_s": times["pool"][0],
                     "pool_s": best["pool"], "one_proc_s": best["one_proc"],
                     "basicsr_loop_s": best["basicsr_loop"],
                     "pool_vs_basicsr": best["basicsr_loop"] / best["pool"],
                     "one_proc_vs_basicsr": best["basicsr_loop"] / best["one_proc"],
                     "pool_started": running_pool(args.workers, torch.get_num_threads()) is not None,
                     "Set5_psnr": v_one["Set5_psnr"], "Set14_psnr": v_one["Set14_psnr"],
                     "max_psnr_diff_vs_peer": max(abs(v_one[k] - v_peer[k]) for k in v_one if "psnr" in k),
                     "pool_equals_one_proc": values["pool"] == v_one})
    report("eval_suite", rows, f"Set5+Set14 x{SCALE}: worker pool vs one process vs BasicSR-style loop "
           f"(wall s, best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
