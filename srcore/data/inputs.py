"""The raw images of ``srcore data prepare``: one or several folders or ``s3://`` prefixes
(DIV2K + Flickr2K + LSDIR), listed with cheap per-file metadata and never read here.

Images are taken input by input, each input's files in sorted order. Shard rows name an image
by its file stem, so stems must be unique across every input: a clash (``0001.png`` in two
inputs, or ``a.png`` beside ``a.jpg``) is refused before anything is written.

Each image carries a ``key``: its size and modification time (folder) or its size and ETag (S3).
It changes when the file does, so a rerun can reuse the content hash an earlier run recorded for
the same key instead of reading the file again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcore.data.store import Bucket, Folder, open_store
from srcore.errors import DataError

__all__ = ["InputImage", "file_keys", "list_images"]


@dataclass(frozen=True)
class InputImage:
    source: int  # position of its input in prepare.input
    location: str  # that input, as configured
    name: str  # file name within it
    key: str  # size + mtime, or size + ETag

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


def file_keys(store: Folder | Bucket) -> dict[str, str]:
    """Visible top-level files (as ``store.files()`` lists them) -> size and mtime, or size and ETag.

    One listing (``scandir`` / ``ListObjectsV2``), no request per file."""
    if isinstance(store, Bucket):
        return _bucket_keys(store)
    keys = {}
    with os.scandir(store.root) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                st = entry.stat()
                keys[entry.name] = f"{st.st_size}:{st.st_mtime_ns}"
    return keys


def _bucket_keys(store: Bucket) -> dict[str, str]:
    prefix = store.prefix + "/" if store.prefix else ""
    keys: dict[str, str] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
        if token:
            kwargs["ContinuationToken"] = token
        page = store._call("list_objects_v2", **kwargs)
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            if name and not name.startswith("."):
                keys[name] = f"{obj['Size']}:{obj.get('ETag', '').strip(chr(34))}"
        token = page.get("NextContinuationToken")
        if not token:
            return keys
