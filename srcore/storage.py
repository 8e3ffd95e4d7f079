"""Where bytes live: a local path or an object store (``s3://bucket/key``, ``file:///...``), one module.

Everything that crosses machines (raw images, patch shards and their manifest, checkpoints, teachers,
models, run results) is read and written here, so callers never branch on where a file lives:

- whole files: :func:`read_bytes`, :func:`write_bytes`, :func:`file_exists`, :func:`copy_file`,
  :func:`fetch_to_local`;
- random access for Parquet (footer and column-chunk range reads): :func:`open_input_file`;
- a folder or key prefix with the few operations patch preparation and the loaders need:
  :func:`open_store` gives a :class:`Folder` or an :class:`ObjectStore`.

Object stores go through ``pyarrow.fs``. Measured against the stack's SeaweedFS on loopback
(``bench/storage_reads.py``), its C++ S3 client serves the Parquet range reads training makes at
a higher rate than boto3's GETs, and pyarrow's Parquet reader and Ray Data take its file systems
directly, so one client serves prepare, the loaders, Ray Data and checkpoints. Endpoint and keys come
from the usual AWS variables (``AWS_ENDPOINT_URL`` for a local S3 server such as SeaweedFS or moto).

Writes publish whole files only: a local file through a temporary name and a rename
(``srcore.io``), an object through one upload (a store shows an object only once it is complete).
Errors are sorted as callers act on them: an absent file is ``FileNotFoundError``; a store that
cannot be reached or answered with a server error is :class:`StoreUnavailable` (an ``OSError``
worth retrying); a refusal the user must fix (no such bucket, access denied) is a ``DataError``
naming the location.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcore.errors import ConfigError, DataError
from srcore.io import atomic_output, atomic_write_bytes

__all__ = ["Entry", "Folder", "ObjectStore", "StoreUnavailable", "copy_file", "endpoint_env",
           "fetch_to_local", "file_exists", "filesystem", "is_s3", "is_uri", "join", "open_input_file",
           "open_store", "read_bytes", "write_bytes"]

_S3 = "s3://"
_BLOCK = 1 << 20
# pyarrow's S3 errors carry the AWS SDK's error name; these mean "try again", not "fix something".
_TRANSIENT = ("NETWORK_CONNECTION", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE", "REQUEST_TIMEOUT",
              "THROTTLING", "curlCode", "Connection refused", "Couldn't connect", "Timeout", "timed out",
              "INTERNAL_ERROR", "Unable to connect")
_REFUSED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "NO_SUCH_BUCKET",
            "AccessDenied", "InvalidAccessKeyId", "NoSuchBucket", "Forbidden", "403")


class StoreUnavailable(OSError):
    """The object store could not be reached or answered with a server error: worth retrying."""


# Where the object store is (a laptop cluster's local S3 server) is part of where the data is, so this
# process's setting travels with work sent to other machines; credentials stay with each machine.
ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def endpoint_env() -> dict[str, str]:
    """The object-store endpoint settings of this process, to pass on to remote tasks and workers."""
    return {k: os.environ[k] for k in ENDPOINT_VARS if os.environ.get(k)}


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations (object stores); False for local paths. The one test."""
    return "://" in str(path)


def is_s3(location: str | os.PathLike) -> bool:
    return str(location).startswith(_S3)


def join(location: str | os.PathLike, name: str) -> str:
    """``name`` under a folder or key prefix, as a string (``/`` joins both kinds)."""
    return f"{str(location).rstrip('/')}/{name}" if is_uri(location) else str(Path(location) / name)


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None, bucket: str) -> Any:
    import pyarrow.fs as pafs

    if endpoint:  # a local or private S3 server: no region lookup (it has one region)
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region or "us-east-1",
                                 allow_bucket_creation=False)
    fs, _ = pafs.FileSystem.from_uri(f"{_S3}{bucket}")  # AWS: the bucket's own region
    return fs


def filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow file system of ``uri`` and the path inside it (``bucket/key`` for S3). Clients
    are reused within a process (keyed by endpoint and region, which the environment may change)."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        path = uri[len(_S3):]
        bucket = path.partition("/")[0]
        if not bucket:
            raise ConfigError(f"{uri}: an S3 location needs a bucket (s3://bucket/prefix)")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        try:
            return _s3(endpoint, region, bucket), path.rstrip("/")
        except OSError as exc:
            raise _sorted_error(uri, exc) from exc
    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def _sorted_error(where: str, exc: OSError) -> OSError:
    """``exc`` as one of the three kinds the module docstring names."""
    if isinstance(exc, (FileNotFoundError, StoreUnavailable)):
        return exc
    text = str(exc)
    if "NoSuchKey" in text or "NOT_FOUND" in text or "Path does not exist" in text:
        return FileNotFoundError(f"{where}: no such object")
    if any(t in text for t in _REFUSED):
        return DataError(f"{where}: the object store refused the request ({text.splitlines()[0][:200]}); "
                         "check the bucket name, the endpoint (AWS_ENDPOINT_URL) and the credentials")
    if any(t in text for t in _TRANSIENT) or is_uri(where):
        return StoreUnavailable(f"{where}: object store unavailable ({text.splitlines()[0][:200]})")
    return exc


@contextmanager
def _errors_named(where: str) -> Iterator[None]:
    try:
        yield
    except DataError:
        raise
    except OSError as exc:
        raise _sorted_error(where, exc) from exc


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, local or in an object store. Raises ``OSError`` (``FileNotFoundError`` if absent)."""
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, key = filesystem(str(path))
    with _errors_named(str(path)), fs.open_input_stream(key) as stream:
        return stream.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file: atomically on a local disk; an object store's put is whole or nothing."""
    if not is_uri(path):
        atomic_write_bytes(path, data)
        return
    fs, key = filesystem(str(path))
    with _errors_named(str(path)), fs.open_output_stream(key) as stream:
        stream.write(data)


def file_exists(path: str | os.PathLike) -> bool:
    """Whether a file is there, local or in an object store (``False`` when the store cannot say)."""
    if not is_uri(path):
        return bool(str(path)) and Path(path).is_file()
    import pyarrow.fs as pafs

    try:
        fs, key = filesystem(str(path))
        return fs.get_file_info(key).type == pafs.FileType.File
    except (OSError, ConfigError):
        return False


def open_input_file(path: str | os.PathLike) -> Any:
    """A random-access file (``pyarrow.NativeFile``): Parquet reads only the byte ranges it needs."""
    import pyarrow as pa

    if not is_uri(path):
        return pa.OSFile(str(path))
    fs, key = filesystem(str(path))
    with _errors_named(str(path)):
        return fs.open_input_file(key)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy one file; either side may be a local path or a URI. Raises ``OSError`` when it cannot."""
    import pyarrow.fs as pafs

    src_fs, src_path = filesystem(str(src))
    where = f"{src} -> {dest}"
    if is_uri(dest):
        dest_fs, dest_path = filesystem(str(dest))
        with _errors_named(where):
            pafs.copy_files(src_path, dest_path, source_filesystem=src_fs, destination_filesystem=dest_fs,
                            use_threads=False)
        return
    with atomic_output(dest) as tmp, _errors_named(where):
        pafs.copy_files(src_path, str(tmp.resolve()), source_filesystem=src_fs,
                        destination_filesystem=pafs.LocalFileSystem(), use_threads=False)


def fetch_to_local(uri: str, folder: str | os.PathLike | None = None) -> Path:
    """Copy an object-store file into ``folder`` (a new temporary folder by default); returns the copy."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="srcore-"))
    target = folder / Path(uri.split("://", 1)[-1]).name
    copy_file(uri, target)
    return target


def _sha256_of(stream: Any) -> str:
    h = hashlib.sha256()
    with stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One listed file: its name relative to the folder or prefix, size in bytes, and modification
    time in nanoseconds (``None`` where the store does not say)."""

    name: str
    size: int
    mtime_ns: int | None


def open_store(location: str | os.PathLike, base: str | os.PathLike | None = None) -> Folder | ObjectStore:
    """A local folder, or an S3 bucket and key prefix for ``s3://bucket[/prefix]``. A relative
    folder resolves against ``base`` (default: the working directory)."""
    location = str(location)
    if is_s3(location):
        bucket, _, prefix = location[len(_S3):].partition("/")
        if not bucket:
            raise ConfigError(f"{location}: an S3 location needs a bucket (s3://bucket/prefix)")
        return ObjectStore(bucket, prefix.strip("/"))
    if is_uri(location):
        raise ConfigError(f"{location}: only local folders and s3:// locations are supported")
    return Folder(Path(location), Path(base) if base is not None else None)


class Folder:
    """A local folder. Messages name it as given; files are opened relative to ``base`` when it is set."""

    def __init__(self, shown: Path, base: Path | None = None) -> None:
        self.shown = shown
        self.root = base / shown if base is not None else shown

    def __str__(self) -> str:
        return str(self.shown)

    def path(self, name: str) -> str:
        """``name`` as messages show it."""
        return str(self.shown / name)

    def location(self, name: str) -> str:
        """``name`` as any process on this machine opens it (absolute)."""
        return str((self.root / name).resolve())

    def is_folder(self) -> bool:
        return self.root.is_dir()

    def files(self) -> list[str]:
        """Names of the visible files at the top level, sorted."""
        return [e.name for e in self.entries()]

    def entries(self) -> list[Entry]:
        """The visible files at the top level with their size and time, sorted by name."""
        out = []
        with os.scandir(self.root) as it:
            for d in it:
                if d.is_file() and not d.name.startswith("."):
                    st = d.stat()
                    out.append(Entry(d.name, st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda e: e.name)

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.is_file() else None

    def sha256(self, name: str) -> str:
        return _sha256_of(open(self.root / name, "rb"))

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """The local path to write ``name`` to; here the destination itself (the writer is atomic)."""
        yield self.root / name

    def shards(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob("x*/*.parquet"))

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def tidy(self) -> None:
        """Remove the scale folders left empty."""
        for folder in self.root.glob("x*"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def temporaries(self) -> list[Path]:
        """Half-written files (``.<name>.*.tmp``) an interrupted run left behind."""
        return [*self.root.glob(".*.tmp"), *self.root.glob("x*/.*.tmp")]


class ObjectStore:
    """Objects under ``s3://bucket/prefix`` (pyarrow's S3 client, made on first use in each process)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix

    def __str__(self) -> str:
        return f"{_S3}{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self.bucket}/{self.prefix}/{name}" if self.prefix else f"{self.bucket}/{name}"

    def path(self, name: str) -> str:
        return f"{_S3}{self._key(name)}"

    location = path

    @property
    def fs(self) -> Any:
        return filesystem(str(self))[0]

    def _list(self, recursive: bool) -> list[Any]:
        import pyarrow.fs as pafs

        base = f"{self.bucket}/{self.prefix}".rstrip("/")
        with _errors_named(str(self)):
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
        cut = len(base) + 1
        return [(i.path[cut:], i) for i in infos if i.type == pafs.FileType.File]

    def is_folder(self) -> bool:
        import pyarrow.fs as pafs

        base = f"{self.bucket}/{self.prefix}".rstrip("/")
        with _errors_named(str(self)):
            if self.fs.get_file_info(self.bucket).type == pafs.FileType.NotFound:
                raise DataError(f"{self}: no such bucket {self.bucket!r}; create it or check the name and "
                                "the endpoint (AWS_ENDPOINT_URL)")
            return bool(self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)))

    def files(self) -> list[str]:
        return [e.name for e in self.entries()]

    def entries(self) -> list[Entry]:
        out = [Entry(n, int(i.size or 0), i.mtime_ns) for n, i in self._list(recursive=False)]
        return sorted((e for e in out if e.name and not e.name.startswith(".")), key=lambda e: e.name)

    def read_bytes(self, name: str) -> bytes:
        with _errors_named(self.path(name)), self.fs.open_input_stream(self._key(name)) as stream:
            return stream.read()

    def size(self, name: str) -> int | None:
        import pyarrow.fs as pafs

        with _errors_named(self.path(name)):
            info = self.fs.get_file_info(self._key(name))
        return int(info.size) if info.type == pafs.FileType.File else None

    def sha256(self, name: str) -> str:
        with _errors_named(self.path(name)):
            return _sha256_of(self.fs.open_input_stream(self._key(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        with _errors_named(self.path(name)), self.fs.open_output_stream(self._key(name)) as stream:
            stream.write(data)

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """A local temporary file, uploaded as ``name`` in one go when the block succeeds."""
        with tempfile.TemporaryDirectory(prefix="srcore-stage-") as tmp:
            path = Path(tmp) / Path(name).name
            yield path
            copy_file(path, self.path(name))

    def shards(self) -> list[str]:
        return sorted(n for n, _ in self._list(recursive=True)
                      if n.startswith("x") and n.count("/") == 1 and n.endswith(".parquet"))

    def delete(self, name: str) -> None:
        with _errors_named(self.path(name)):
            self.fs.delete_file(self._key(name))

    def tidy(self) -> None:
        """Nothing to do: a bucket has no folders to leave empty."""

    def temporaries(self) -> list[Path]:
        return []  # an upload that did not finish leaves no object
