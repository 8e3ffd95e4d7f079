"""Compile the numba CPU kernels (the selective scan, forward and backward, the resize and the SSIM)
once, into numba's on-disk cache next to their sources.

Without it, every process that first touches a kernel before the cache exists compiles it itself
(a DVMSR forward alone: 8.9 CPU-seconds cold against 2.6 cached, on two cores): on a fresh checkout
the first training ranks, evaluation workers and test processes all do, at the same time.
``make install`` runs this once, the scan and the image kernels in two processes side by side (each
kernel's cache index is written by one process only).

    python -m srcore.models.kernel_cache
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from srcore.data.imresize import imresize_np
from srcore.metrics.quality import ssim_y
from srcore.models.presets import build

__all__ = ["warm_kernel_cache"]

# One small Mamba model reaches both scan kernels with the argument types every preset passes them.
# numba compiles once per dtype and array layout: without autograd the gate goes into the forward
# kernel, as a strided view of a batch (a distillation teacher, batched validation) or as a
# contiguous array of one image; with autograd it is applied outside.
_SIZE = 32


def _warm_scan() -> None:
    model = build("dvmsr", 2, embed_dim=8, depths=[1])
    x = torch.rand(2, 3, _SIZE, _SIZE, requires_grad=True)
    model(x).mean().backward()  # the scan's forward and backward
    with torch.no_grad():
        model(x)  # the forward with the gate, on a batch (one image has the layout of the line above)


def _warm_images() -> None:
    image = np.random.default_rng(0).random((_SIZE, _SIZE, 3))
    for pixels in (image, image.astype(np.float32), (image * 255).astype(np.uint8)):
        imresize_np(pixels, scale=0.5)
    ssim_y(image, image[::-1].copy())  # the evaluation's SSIM


def warm_kernel_cache(processes: int = 2) -> float:
    """Run each kernel once at the dtypes and layouts the pipeline uses, in up to ``processes``
    processes (1: in this one); returns the seconds it took."""
    start = time.perf_counter()
    jobs = (_warm_scan, _warm_images)
    if processes <= 1:
        for job in jobs:
            job()
    else:
        with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            for done in [pool.submit(job) for job in jobs]:
                done.result()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba kernels compiled and cached in {warm_kernel_cache():.1f} s")
