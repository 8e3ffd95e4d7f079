"""SSIM-Y: ours (fused separable Gaussian, numba, float64) vs BasicSR's OpenCV formula, same run.

The peer is BasicSR's ``calculate_ssim`` formula re-stated here: five ``cv2.filter2D`` passes with
the 11x11 Gaussian window on float64, cropped to the valid region. Both sides get the same Y maps
of a 1024x768 pair; each side is timed in its own phase. Needs the ``bench`` extra (opencv).
Run: python bench/metrics.py
"""

from __future__ import annotations

import numpy as np
from common import report, timeit

from srcore.metrics import psnr_y, rgb_to_y, ssim


def basicsr_ssim(img1: np.ndarray, img2: np.ndarray) -> float:
    """BasicSR's ``_ssim`` (basicsr/metrics/psnr_ssim.py) on two float64 maps in [0, 255]."""
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    mu1 = cv2.filter2D(img1, -1, window)[5:-5, 5:-5]
    mu2 = cv2.filter2D(img2, -1, window)[5:-5, 5:-5]
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = cv2.filter2D(img1**2, -1, window)[5:-5, 5:-5] - mu1_sq
    sigma2_sq = cv2.filter2D(img2**2, -1, window)[5:-5, 5:-5] - mu2_sq
    sigma12 = cv2.filter2D(img1 * img2, -1, window)[5:-5, 5:-5] - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def main() -> None:
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024]
    base = 127 + 60 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None]
    hr = np.clip(base + rng.normal(0, 20, size=(768, 1024, 3)), 0, 255).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, 6, size=hr.shape), 0, 255).round().astype(np.uint8)
    ya, yb = rgb_to_y(sr), rgb_to_y(hr)

    ours_value, peer_value = ssim(ya, yb), basicsr_ssim(ya, yb)
    t_ours = timeit(lambda: ssim(ya, yb), repeats=7, warmup=1)  # phase 1: ours only
    t_peer = timeit(lambda: basicsr_ssim(ya, yb), repeats=7, warmup=1)  # phase 2: the peer only
    t_psnr = timeit(lambda: psnr_y(sr, hr), repeats=7, warmup=1)
    # Floor: the one read of both maps at the measured copy bandwidth.
    t_copy = timeit(lambda: np.copyto(np.empty_like(ya), ya), repeats=7, warmup=1)
    report("metrics", [{
        "task": "SSIM-Y 1024x768", "ours_s": t_ours, "basicsr_cv2_s": t_peer, "speedup": t_peer / t_ours,
        "abs_diff": abs(ours_value - peer_value), "ours_threads": 1, "cv2_threads": cv2.getNumThreads(),
        "read_floor_s": t_copy, "psnr_y_rgb_s": t_psnr,
    }], "SSIM-Y on a 1024x768 pair: ours vs BasicSR's OpenCV formula (median of 7)")


if __name__ == "__main__":
    main()
