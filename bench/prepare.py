"""Patch preprocessing: ours (Parquet shards) vs a BasicSR-style PNG-folder pipeline.

Both cut the same sub-images (HR 480/step 240, LR from the same MATLAB bicubic) from the same
synthetic 2K images with the same number of processes; the peer writes every crop as a PNG
file (HR once, LR per scale), as BasicSR's extract_subimages does with OpenCV/PIL.
Run: python bench/prepare.py [--images 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import report
from PIL import Image

from srcore.config import PrepareParams
from srcore.data.image_io import read_rgb
from srcore.data.patches import extract_pairs
from srcore.data.prepare import prepare

SCALES = (2, 3, 4)


def _synthetic(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1356, 0:2040]
    for i in range(n):
        base = 128 + 70 * np.sin(xx / (13 + i)) * np.cos(yy / (17 + 2 * i))
        img = np.clip(base[..., None] + rng.normal(0, 12, (1356, 2040, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:04d}.png", compress_level=1)


def _png_folder_job(args: tuple[str, str]) -> None:
    path, out = args
    img = read_rgb(path)
    stem = Path(path).stem
    pairs = extract_pairs(img, SCALES, 480, 240, 0)
    for s, items in pairs.items():
        for p in items:
            if s == SCALES[0]:
                Image.fromarray(p.hr).save(f"{out}/HR/{stem}_s{p.index:03d}.png", compress_level=3)
            Image.fromarray(p.lr).save(f"{out}/LRx{s}/{stem}_s{p.index:03d}.png", compress_level=3)


def _init() -> None:
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _synthetic(tmp / "raw", args.images)
        rows = []
        for encoding in ("raw", "png"):
            out = tmp / f"ours-{encoding}"
            t0 = time.perf_counter()
            prepare(PrepareParams(input=str(tmp / "raw"), out=str(out), scales=SCALES, crop_size=480, step=240,
                                  encoding=encoding, workers=args.workers))
            dt = time.perf_counter() - t0
            rows.append({"pipeline": f"ours parquet ({encoding})", "images_per_s": args.images / dt,
                         "seconds": dt, "output_mb": _size(out) / 2**20})
            shutil.rmtree(out)
        peer = tmp / "png-folders"
        for sub in ["HR"] + [f"LRx{s}" for s in SCALES]:
            (peer / sub).mkdir(parents=True)
        jobs = [(str(p), str(peer)) for p in sorted((tmp / "raw").glob("*.png"))]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers, initializer=_init) as pool:
            pool.map(_png_folder_job, jobs)
        dt = time.perf_counter() - t0
        rows.append({"pipeline": "BasicSR-style PNG folders", "images_per_s": args.images / dt, "seconds": dt,
                     "output_mb": _size(peer) / 2**20})
        for r in rows[:2]:
            r["x_vs_png_folders"] = r["images_per_s"] / rows[-1]["images_per_s"]
        rows[-1]["x_vs_png_folders"] = 1.0
    report("prepare", rows, f"patch preprocessing, {args.images} synthetic 2040x1356 images, x2/x3/x4, "
                            f"{args.workers} processes")


if __name__ == "__main__":
    main()
