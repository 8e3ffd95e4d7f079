"""The embedded sample set: a small DF2K-like HR folder made from images scikit-image ships.

Written byte-for-byte reproducibly (so ``data.dvc`` can pin its DVC hash on any machine):
the PNG writer below stores the pixels in uncompressed deflate blocks, because compressed PNG
bytes depend on the zlib build that Pillow bundles, which differs between releases.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from srcore.io import atomic_write_bytes

__all__ = ["TRAIN_IMAGES", "VAL_IMAGES", "sample_images", "write_sample", "stored_png"]

TRAIN_IMAGES = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "motorcycle_left", "motorcycle_right")
VAL_IMAGES = ("chelsea", "coffee")


def _load(name: str) -> np.ndarray:
    from skimage import data as skdata

    if name.startswith("motorcycle_"):
        left, right, _ = skdata.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(skdata, name)()
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def sample_images() -> dict[str, list[tuple[str, np.ndarray]]]:
    """{"train": [(name, HxWx3 uint8)], "val": [...]} in a fixed order."""
    return {"train": [(n, _load(n)) for n in TRAIN_IMAGES], "val": [(n, _load(n)) for n in VAL_IMAGES]}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def stored_png(img: np.ndarray) -> bytes:
    """An 8-bit RGB PNG whose zlib stream uses stored (uncompressed) blocks: deterministic bytes."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter type 0 per scanline
    blocks = []
    for i in range(0, len(raw), 65535):
        part = raw[i:i + 65535]
        final = 1 if i + 65535 >= len(raw) else 0
        blocks.append(struct.pack("<BHH", final, len(part), 0xFFFF ^ len(part)) + part)
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def write_sample(out: str | Path) -> dict[str, int]:
    """Write ``<out>/train/*.png`` and ``<out>/val/HR/*.png``; returns image counts."""
    out = Path(out)
    counts = {}
    for split, items in sample_images().items():
        folder = out / "train" if split == "train" else out / "val" / "HR"
        for name, img in items:
            atomic_write_bytes(folder / f"{name}.png", stored_png(img))
        counts[split] = len(items)
    return counts
