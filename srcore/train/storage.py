"""Where training keeps its files: a local folder or an object store (``s3://...``, any URI pyarrow reads).

``copy_file`` copies one file between any two such places (a local destination is written
atomically); ``srcore.io`` reads, writes and finds a whole small file in either, and ``is_uri``
tells the two apart.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from srcore.io import atomic_output, is_uri

__all__ = ["copy_file", "fetch_to_local", "is_uri"]


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy one file; either side may be a local path or a URI. Raises ``OSError`` when it cannot."""
    import pyarrow.fs as pafs

    src, dest = str(src), str(dest)
    local = pafs.LocalFileSystem()
    src_fs = None if is_uri(src) else local
    src = src if is_uri(src) else str(Path(src).resolve())
    if is_uri(dest):
        pafs.copy_files(src, dest, source_filesystem=src_fs, use_threads=False)
        return
    with atomic_output(dest) as tmp:
        pafs.copy_files(src, str(tmp.resolve()), source_filesystem=src_fs, destination_filesystem=local,
                        use_threads=False)


def fetch_to_local(uri: str, folder: str | os.PathLike | None = None) -> Path:
    """Copy an object-store file into ``folder`` (a new temporary folder by default); returns the copy."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="srcore-"))
    target = folder / Path(uri.split("://", 1)[-1]).name
    copy_file(uri, target)
    return target
