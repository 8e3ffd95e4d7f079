"""Reading and writing 8-bit RGB images with clear errors and atomic writes.

Error texts depend only on the file name and its content (never on object addresses), so a
manifest that records them is the same bytes on every run. Dropping an alpha channel is logged
as a warning, once per image.

Every image is checked against one pixel limit (``SRCORE_MAX_IMAGE_PIXELS``, default
:data:`DEFAULT_MAX_PIXELS`) from its header, before any pixel is decoded: a few bytes claiming
60000x60000 pixels are refused with one line instead of allocating gigabytes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from srcore.errors import ConfigError, DataError
from srcore.io import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "MAX_PIXELS_ENV", "check_pixels", "decode_rgb",
           "image_files", "max_image_pixels", "modcrop", "png_bytes", "read_rgb", "write_png"]

# File name endings read as images when a whole folder is given.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The largest image of DF2K and the benchmarks is 2040x2040 (DIV2K); eight times that (33.3 MP)
# still takes an 8K frame (7680x4320) whole. One 33 MP image is 100 MB as uint8 RGB.
DEFAULT_MAX_PIXELS = 8 * 2040 * 2040
MAX_PIXELS_ENV = "SRCORE_MAX_IMAGE_PIXELS"
# Pillow refuses anything above twice its MAX_IMAGE_PIXELS itself; our limit must stay below that.
_PILLOW_CEILING = 2 * (Image.MAX_IMAGE_PIXELS or 2**62)


def max_image_pixels() -> int:
    """The pixel limit (width x height) every image read is checked against: ``SRCORE_MAX_IMAGE_PIXELS``
    or :data:`DEFAULT_MAX_PIXELS`. Read from the environment so that worker processes, Ray tasks and
    the served model apply the same limit as the command that started them."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text.replace("_", ""))
    except ValueError:
        limit = 0
    if not 1 <= limit <= _PILLOW_CEILING:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: expected a whole number of pixels from 1 to "
                          f"{_PILLOW_CEILING} (default {DEFAULT_MAX_PIXELS})")
    return limit


def check_pixels(width: int, height: int, name: str) -> None:
    """Refuse an image of more than :func:`max_image_pixels` pixels, naming it and the setting."""
    limit = max_image_pixels()
    if width * height > limit:
        raise DataError(f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of "
                        f"{limit:,}; downscale or crop it, or raise {MAX_PIXELS_ENV}")


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
        with _open_checked(data, name) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataError(f"{name}: {im.mode} (16/32-bit) images are not supported; "
                                "convert to 8-bit RGB")
            if not convert and im.mode != "RGB":
                raise DataError(f"{name}: {im.mode} image, expected 8-bit RGB; convert it or remove it")
            if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
                rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
                _warn_alpha(name, rgba[..., 3])
                arr = rgba[..., :3]
            else:
                arr = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except UnidentifiedImageError:
        # PIL's own message names the in-memory buffer by address, which differs on every run.
        raise DataError(f"{name}: not a recognised image format; remove or replace the file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({exc}); remove or replace the file") from exc
    return np.ascontiguousarray(arr)


def _open_checked(data: bytes, name: str) -> Image.Image:
    """Open (parse the header of) an image and check its size before anything is decoded."""
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        raise DataError(f"{name}: {size} is over the limit of {max_image_pixels():,}; downscale or crop "
                        "it") from None
    try:
        check_pixels(im.width, im.height, name)
    except DataError:
        im.close()
        raise
    return im


def _warn_alpha(name: str, alpha: np.ndarray) -> None:
    clear = float(np.mean(alpha < 255))
    log.warning("%s: alpha channel dropped (%.1f%% of pixels not opaque); super-resolving the RGB only",
                name, 100 * clear)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (see :func:`decode_rgb`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    return decode_rgb(data, str(path))


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images directly inside ``folder`` (by suffix, hidden files left out), sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


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
