"""PSNR and SSIM on the luma channel, following the SR literature's MATLAB convention.

Images are HxWx3 RGB arrays in [0, 255] (uint8, or float already rounded the way the
caller wants). Y uses the BT.601 "MATLAB rgb2ycbcr" coefficients without rounding, a
``border`` of pixels is cropped on every side, and everything is computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "psnr_y", "ssim_y", "psnr_rgb", "ssim"]

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
        raise ValueError(f"shape mismatch: {img1.shape} vs {img2.shape}; crop both to the same size (modcrop)")
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


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two single-channel float64 maps in [0, 255]: 11x11 Gaussian (sigma 1.5), valid region."""
    k1, k2, data_range = 0.01, 0.03, 255.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    win = _gaussian_window()
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))[None, None]
    if min(x.shape[-2:]) < win.shape[-1]:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(x.shape[-2:])}")
    # One conv over the five moment maps instead of five separate filter passes.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    mu_x, mu_y, xx, yy, xy = F.conv2d(stack, win)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def ssim_y(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """SSIM on Y after cropping ``border`` pixels on each side."""
    _check_pair(img1, img2, border)
    return ssim(_crop(_luma(img1), border), _crop(_luma(img2), border))
