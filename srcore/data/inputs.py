"""The raw images of ``srcore data prepare``: one or several folders or ``s3://`` prefixes
(DIV2K + Flickr2K + LSDIR), listed with cheap per-file metadata and never read here.

Images are taken input by input, each input's files in sorted order. Shard rows name an image
by its file stem, so stems must be unique across every input: a clash (``0001.png`` in two
inputs, or ``a.png`` beside ``a.jpg``) is refused before anything is written.

Each image carries a ``key``: its size and modification time (an object's LastModified in S3).
It changes when the file does, so a rerun can reuse the content hash an earlier run recorded for
the same key instead of reading the file again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from srcore.errors import DataError
from srcore.storage import Folder, ObjectStore, open_store

__all__ = ["InputImage", "file_keys", "list_images"]


@dataclass(frozen=True)
class InputImage:
    source: int  # position of its input in prepare.input
    location: str  # that input, as configured
    name: str  # file name within it
    key: str  # size + modification time

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def list_images(locations: Sequence[str]) -> list[InputImage]:
    """Every visible file of every input, in order; refuses a missing or empty input and a name
    used twice."""
    images: list[InputImage] = []
    first: dict[str, str] = {}  # stem -> where it was first seen
    for i, location in enumerate(locations):
        store = open_store(location)
        if not store.is_folder():
            raise DataError(f"input folder {store} not found; create it (srcore data sample) or pass --input")
        keys = file_keys(store)
        if not keys:
            raise DataError(f"input folder {store} is empty; put HR images there")
        for name in sorted(keys):
            image = InputImage(i, location, name, keys[name])
            if image.stem in first:
                raise DataError(f"{store.path(name)}: image name {image.stem!r} is taken by "
                                f"{first[image.stem]}; names must be unique across prepare.input: rename "
                                "one of them or leave one input out")
            first[image.stem] = store.path(name)
            images.append(image)
    return images


def file_keys(store: Folder | ObjectStore) -> dict[str, str]:
    """Visible top-level files (as ``store.files()`` lists them) -> size and modification time.

    One listing (``scandir`` / ``ListObjectsV2``), no request per file."""
    return {e.name: f"{e.size}:{e.mtime_ns}" for e in store.entries()}
