"""MATLAB bicubic: ours (torch, per-tap gathers) vs a straightforward numpy loop, same algorithm.

Downscale a 2040x1356 RGB uint8 image by 4 and upscale it back; checks identical uint8 output.
Run: python bench/imresize.py
"""

from __future__ import annotations

import numpy as np
from common import report, timeit
from references import matlab_imresize_numpy, matlab_round_uint8

from srcore.data.imresize import imresize_np


def main() -> None:
    rng = np.random.default_rng(0)
    # A smooth image with texture, so the uint8 comparison exercises real rounding.
    yy, xx = np.mgrid[0:1356, 0:2040]
    base = 127 + 60 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None]
    img = np.clip(base + rng.normal(0, 20, size=(1356, 2040, 3)), 0, 255).astype(np.uint8)

    def ours():
        lr = imresize_np(img, scale=0.25)
        return lr, imresize_np(lr, scale=4)

    def peer():
        lr = matlab_round_uint8(matlab_imresize_numpy(img, 0.25))
        return lr, matlab_round_uint8(matlab_imresize_numpy(lr, 4))

    (lr_a, up_a), (lr_b, up_b) = ours(), peer()
    t_ours, t_peer = timeit(ours, repeats=3), timeit(peer, repeats=1, warmup=0)
    report("imresize", [{
        "task": "2040x1356 RGB /4 then x4", "ours_s": t_ours, "numpy_loop_s": t_peer,
        "speedup": t_peer / t_ours,
        "lr_identical": bool(np.array_equal(lr_a, lr_b)), "up_identical": bool(np.array_equal(up_a, up_b)),
    }], "MATLAB bicubic imresize: ours vs numpy reference")


if __name__ == "__main__":
    main()
