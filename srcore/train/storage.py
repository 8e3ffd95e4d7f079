"""Where training keeps its files: a local folder or an object store (``s3://...``, any URI pyarrow reads).

``copy_file`` copies one file between any two such places (a local destination is written
atomically); ``read_bytes``, ``write_bytes`` and ``file_exists`` handle a small file (a run's recorded
result) in either; ``srcore.io.is_uri`` tells the two apart.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from srcore.io import atomic_output, atomic_write_bytes, is_uri

__all__ = ["copy_file", "fetch_to_local", "file_exists", "is_uri", "read_bytes", "write_bytes"]


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


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, local or in an object store. Raises ``OSError`` (``FileNotFoundError`` if absent)."""
    if not is_uri(path):
        return Path(path).read_bytes()
    import pyarrow.fs as pafs

    fs, key = pafs.FileSystem.from_uri(str(path))
    with fs.open_input_stream(key) as stream:
        return stream.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file: atomically on a local disk; an object store's put is whole or nothing."""
    if not is_uri(path):
        atomic_write_bytes(path, data)
        return
    import pyarrow.fs as pafs

    fs, key = pafs.FileSystem.from_uri(str(path))
    with fs.open_output_stream(key) as stream:
        stream.write(data)


def file_exists(path: str | os.PathLike) -> bool:
    """Whether a file is there, local or in an object store (``False`` when the store cannot say)."""
    if not is_uri(path):
        return Path(path).is_file()
    import pyarrow.fs as pafs

    try:
        fs, key = pafs.FileSystem.from_uri(str(path))
        return fs.get_file_info(key).type == pafs.FileType.File
    except OSError:
        return False
