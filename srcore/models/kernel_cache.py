"""Compile the numba CPU kernels (the selective scan, forward and backward, and the resize) once,
into numba's on-disk cache next to their sources.

Without it, every process that first touches a kernel before the cache exists compiles it itself
(about 6 CPU-seconds each on two cores): on a fresh checkout the first training ranks, evaluation
workers and test processes all do, at the same time. ``make install`` runs this once.

    python -m srcore.models.kernel_cache
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from srcore.data.imresize import imresize_np
from srcore.models.presets import build

log = logging.getLogger(__name__)

__all__ = ["warm_kernel_cache"]

# The Mamba presets (their scans take the kernels' two argument layouts) and a size every preset's
# windows divide.
_SCAN_PRESETS = ("dvmsr", "mair_t")
_SIZE = 32


def warm_kernel_cache() -> float:
    """Run each kernel once at the dtypes the pipeline uses; returns the seconds it took."""
    start = time.perf_counter()
    for name in _SCAN_PRESETS:
        model = build(name, 2)
        x = torch.rand(1, 3, _SIZE, _SIZE, requires_grad=True)
        model(x).mean().backward()  # training: forward and backward
        with torch.no_grad():
            model.eval()(x)  # inference passes the scan a strided view
    image = np.random.default_rng(0).random((_SIZE, _SIZE, 3))
    for pixels in (image, image.astype(np.float32), (image * 255).astype(np.uint8)):
        imresize_np(pixels, scale=0.5)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba kernels compiled and cached in {warm_kernel_cache():.1f} s")
