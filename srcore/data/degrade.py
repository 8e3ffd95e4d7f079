"""LR generation from HR: the one degradation used for training patches and benchmark LR.

``degrade(hr, scale)``: HR uint8 HxWx3 whose sides are multiples of ``scale`` -> LR uint8
(H/scale)x(W/scale)x3 by MATLAB-compatible bicubic with antialiasing, rounded like MATLAB.
"""

from __future__ import annotations

import numpy as np

from srcore.data.imresize import imresize_np

__all__ = ["degrade"]


def degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic LR of an HR uint8 image that is already a multiple of ``scale``."""
    return imresize_np(hr, scale=1.0 / scale)
