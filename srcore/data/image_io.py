"""Reading and writing 8-bit RGB images with clear errors and atomic writes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from srcore.errors import DataError
from srcore.io import atomic_write_bytes

__all__ = ["decode_rgb", "modcrop", "png_bytes", "read_rgb", "write_png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(data: bytes) -> int | None:
    # IHDR is always the first chunk: signature(8) + length(4) + type(4) + w(4) + h(4) + depth(1).
    if data[:8] == _PNG_SIGNATURE and len(data) > 24:
        return data[24]
    return None


def decode_rgb(data: bytes, name: str = "<bytes>", convert: bool = True) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array.

    Grayscale and palette images are expanded to RGB and alpha is dropped (with ``convert``;
    without it they are refused, as training data should be RGB already); 16-bit images are
    always refused because silently truncating them to 8 bits would change every metric.
    """
    depth = _png_bit_depth(data)
    if depth is not None and depth > 8:
        raise DataError(f"{name}: {depth}-bit PNG is not supported; convert it to 8-bit RGB first")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataError(f"{name}: {im.mode} (16/32-bit) images are not supported; convert to 8-bit RGB")
            if not convert and im.mode != "RGB":
                raise DataError(f"{name}: {im.mode} image, expected 8-bit RGB; convert it or remove it")
            if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({exc}); remove or replace the file") from exc
    return np.ascontiguousarray(arr)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (see :func:`decode_rgb`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    return decode_rgb(data, str(path))


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W down to multiples of ``scale`` (top-left anchored, the field's convention)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def png_bytes(img: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an HxWx3 (or HxW) uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Atomically write an HxWx3 uint8 array as PNG."""
    atomic_write_bytes(path, png_bytes(img))
