"""Atomic local file outputs and up-front output checks, shared by every room that writes files
(files in an object store, and reading or writing whole files wherever they are: ``srcore.storage``).

Readers never see a partial file: data goes to a temporary file in the destination folder and is
renamed over the destination only when the write succeeds. ``check_output_file`` and
``check_output_dir`` let a command refuse a bad destination before it spends minutes computing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from srcore.errors import SrcoreError

__all__ = [
    "OutputError",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
]


class OutputError(SrcoreError, OSError):
    """A destination that cannot be written (parent is a file, no permission, is a folder).

    Also an ``OSError``, so code that already handles file-system errors keeps handling it."""


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write there ({exc.strerror or exc}); choose another output path")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in ``path``'s folder that becomes ``path`` only when the block succeeds:
    readers never see a partial file, and a failure leaves nothing behind. A destination that
    cannot be created or replaced raises :class:`OutputError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a folder that cannot be created or written; returns it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder; choose another output folder")
    base = _first_existing(path)
    if not base.is_dir():
        raise OutputError(f"{path}: {base} is a file, so the folder cannot be created; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {base} is not writable; choose a folder you can write to")
    try:  # permission bits do not tell everything (read-only mounts, root, special file systems)
        fd, probe = tempfile.mkstemp(prefix=".srcore-probe.", suffix=".tmp", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: {base} is not writable ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a file destination that cannot be written; returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name (e.g. {path / 'out.png'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: exists and is not writable; choose another output path")
    check_output_dir(path.parent if str(path.parent) else Path("."))
    return path
