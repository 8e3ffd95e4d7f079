"""PSNR and SSIM on the luma channel, following the SR literature's MATLAB convention.

Images are HxWx3 RGB arrays in [0, 255] (uint8, or float already rounded the way the
caller wants). Y uses the BT.601 "MATLAB rgb2ycbcr" coefficients without rounding, a
``border`` of pixels is cropped on every side, and everything is computed in float64.
"""

from __future__ import annotations

import numpy as np

from srcore.metrics.ssim_kernel import ssim_mean

__all__ = ["psnr_rgb", "psnr_ssim_y", "psnr_y", "rgb_to_y", "ssim", "ssim_y"]

_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def _check_pair(img1: np.ndarray, img2: np.ndarray, border: int) -> None:
    for name, img in (("img1", img1), ("img2", img2)):
        if not isinstance(img, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
            raise TypeError(f"{name}: dtype {img.dtype} is not supported; use uint8 or float in [0, 255]")
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise ValueError(f"{name}: expected HxW or HxWx3, got shape {img.shape}")
        if np.issubdtype(img.dtype, np.floating) and img.size and (img.min() < 0 or img.max() > 255):
            raise ValueError(
                f"{name}: float values must lie in [0, 255], got [{img.min():.3g}, {img.max():.3g}]; "
                "scale [0, 1] images by 255")
    if img1.shape != img2.shape:
        raise ValueError(f"shape mismatch: {img1.shape} vs {img2.shape}; "
                         "crop both to the same size (modcrop)")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    h, w = img1.shape[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"border {border} crops away the whole {h}x{w} image; use a smaller border")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma Y in [16, 235] as float64 (not rounded) from an HxWx3 RGB array in [0, 255]."""
    return img.astype(np.float64) @ _Y_COEFFS + 16.0


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:img.shape[0] - border, border:img.shape[1] - border] if border else img


def _luma(img: np.ndarray) -> np.ndarray:
    return rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def psnr_y(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """PSNR (dB) on Y after cropping ``border`` pixels on each side."""
    _check_pair(img1, img2, border)
    return _psnr(_crop(_luma(img1), border), _crop(_luma(img2), border))


def psnr_rgb(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """PSNR (dB) over all RGB channels, the NTIRE challenge convention."""
    _check_pair(img1, img2, border)
    return _psnr(_crop(img1.astype(np.float64), border), _crop(img2.astype(np.float64), border))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The 1-D factor of the separable 11x11 Gaussian window (float64, sums to 1)."""
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


_WINDOW = _gaussian_1d()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two single-channel float64 maps in [0, 255]: 11x11 Gaussian (sigma 1.5), valid region."""
    k1, k2, data_range = 0.01, 0.03, 255.0
    x = np.ascontiguousarray(a, dtype=np.float64)
    y = np.ascontiguousarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"SSIM needs two single-channel maps of one shape, got {x.shape} and {y.shape}")
    if min(x.shape) < _WINDOW.size:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {x.shape}")
    return float(ssim_mean(x, y, _WINDOW, (k1 * data_range) ** 2, (k2 * data_range) ** 2))


def ssim_y(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """SSIM on Y after cropping ``border`` pixels on each side."""
    _check_pair(img1, img2, border)
    return ssim(_crop(_luma(img1), border), _crop(_luma(img2), border))


def psnr_ssim_y(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> tuple[float, float]:
    """(PSNR-Y, SSIM-Y) after cropping ``border`` pixels, converting each image to Y once."""
    _check_pair(img1, img2, border)
    y1, y2 = _crop(_luma(img1), border), _crop(_luma(img2), border)
    return _psnr(y1, y2), ssim(y1, y2)
