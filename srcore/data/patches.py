"""Sub-image extraction the way the SR field prepares DF2K (BasicSR's ``extract_subimages``).

HR crops of ``crop_size`` every ``step`` pixels, plus a last crop flush with the border when the
remainder exceeds ``thresh_size``; LR crops are the co-located ``crop_size/s`` windows of the
bicubic LR image (our MATLAB imresize of the whole HR image), for every scale in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from srcore.data.degrade import degrade
from srcore.data.image_io import modcrop

__all__ = ["crop_starts", "SubImage", "extract_pairs"]


def crop_starts(length: int, crop: int, step: int, thresh: int) -> list[int]:
    """Top/left offsets along one axis (empty when the axis is shorter than one crop)."""
    if length < crop:
        return []
    starts = list(range(0, length - crop + 1, step))
    if length - (starts[-1] + crop) > thresh:
        starts.append(length - crop)
    return starts


@dataclass(frozen=True)
class SubImage:
    """One HR/LR training pair cut from an image at (y, x) in HR pixels."""

    index: int
    y: int
    x: int
    hr: np.ndarray
    lr: np.ndarray


def extract_pairs(img: np.ndarray, scales: tuple[int, ...], crop: int, step: int, thresh: int
                  ) -> dict[int, list[SubImage]]:
    """All sub-image pairs of ``img`` for each scale.

    The HR image is first cropped to a multiple of lcm(scales) so that every HR offset maps to
    an integer LR offset for every scale (a no-op for DIV2K/Flickr2K sizes).
    """
    multiple = int(np.lcm.reduce(np.array(scales)))
    hr = modcrop(img, multiple)
    ys = crop_starts(hr.shape[0], crop, step, thresh)
    xs = crop_starts(hr.shape[1], crop, step, thresh)
    out: dict[int, list[SubImage]] = {}
    for s in scales:
        lr = degrade(hr, s)
        c = crop // s
        pairs = []
        for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
            pairs.append(SubImage(i, y, x, np.ascontiguousarray(hr[y:y + crop, x:x + crop]),
                                  np.ascontiguousarray(lr[y // s:y // s + c, x // s:x // s + c])))
        out[s] = pairs
    return out
