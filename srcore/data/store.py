"""Where patch preparation reads raw images and writes shards: a local folder or ``s3://bucket/prefix``.

``open_store(location)`` gives a :class:`Folder` or a :class:`Bucket` with the few operations
``srcore.data.prepare`` needs, named by paths relative to the location (``x2/shard-00000.parquet``).
Both publish whole files only: a folder through a temporary name and a rename, a bucket through
one PUT (S3 makes an object visible only once it is complete), so a reader never sees a partial
shard or manifest.

S3 goes through boto3, which takes its endpoint from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``
(a local S3 server such as SeaweedFS or moto) and its credentials from the usual AWS variables or
files. Failures the user must fix (no such bucket, access denied) raise :class:`DataError` naming
the location; transport failures (connection refused, timeouts, 5xx) raise
:class:`StoreUnavailable`, an ``OSError`` that a Ray task retries.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from srcore.errors import ConfigError, DataError
from srcore.io import atomic_write_bytes, is_uri

__all__ = ["Bucket", "Folder", "StoreUnavailable", "is_s3", "open_store"]

_S3 = "s3://"
_BLOCK = 1 << 20


class StoreUnavailable(OSError):
    """The object store could not be reached or answered with a server error: worth retrying."""


def is_s3(location: str | os.PathLike) -> bool:
    return str(location).startswith(_S3)


def open_store(location: str | os.PathLike, base: str | os.PathLike | None = None) -> Folder | Bucket:
    """A local folder, or an S3 bucket and key prefix for ``s3://bucket[/prefix]``. A relative
    folder resolves against ``base`` (default: the working directory)."""
    location = str(location)
    if is_s3(location):
        bucket, _, prefix = location[len(_S3):].partition("/")
        if not bucket:
            raise ConfigError(f"{location}: an S3 location needs a bucket (s3://bucket/prefix)")
        return Bucket(bucket, prefix.strip("/"))
    if is_uri(location):
        raise ConfigError(f"{location}: only local folders and s3:// locations are supported")
    return Folder(Path(location), Path(base) if base is not None else None)


class Folder:
    """A local folder (on a cluster: one every node mounts at the same path). Messages name it
    as given; files are opened relative to ``base`` when it is set."""

    def __init__(self, shown: Path, base: Path | None = None) -> None:
        self.shown = shown
        self.root = base / shown if base is not None else shown

    def __str__(self) -> str:
        return str(self.shown)

    def path(self, name: str) -> str:
        """``name`` as messages show it."""
        return str(self.shown / name)

    def is_folder(self) -> bool:
        return self.root.is_dir()

    def files(self) -> list[str]:
        """Names of the visible files at the top level, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))

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


class Bucket:
    """Objects under ``s3://bucket/prefix``; the boto3 client is made on first use in each process."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix
        self._client: Any = None

    def __getstate__(self) -> dict:
        return {"bucket": self.bucket, "prefix": self.prefix, "_client": None}  # clients do not pickle

    def __str__(self) -> str:
        return f"{_S3}{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def path(self, name: str) -> str:
        return f"{_S3}{self.bucket}/{self._key(name)}"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _call(self, op: str, name: str | None = None, **kwargs: Any) -> Any:
        """One S3 request, with its errors turned into ours (see the module docstring)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = self.path(name) if name is not None else str(self)
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except NoCredentialsError:
            raise DataError(f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "or an AWS profile") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{where}: no such object") from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"):
                raise StoreUnavailable(f"{where}: S3 answered {code or status}; try again") from exc
            raise DataError(f"{where}: S3 refused the request ({code or status}); check the bucket name, "
                            "the endpoint (AWS_ENDPOINT_URL) and the credentials") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{where}: S3 unreachable ({exc})") from exc

    def is_folder(self) -> bool:
        return bool(self._list(self.prefix + "/" if self.prefix else "", max_keys=1))

    def _list(self, prefix: str, delimiter: str | None = None, max_keys: int | None = None) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            if max_keys:
                kwargs["MaxKeys"] = max_keys
            page = self._call("list_objects_v2", **kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token or (max_keys and len(keys) >= max_keys):
                return keys

    def _names(self, keys: list[str]) -> list[str]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        return [k[cut:] for k in keys]

    def files(self) -> list[str]:
        names = self._names(self._list(self.prefix + "/" if self.prefix else "", delimiter="/"))
        return sorted(n for n in names if n and not n.startswith("."))

    def read_bytes(self, name: str) -> bytes:
        return self._call("get_object", name, Key=self._key(name))["Body"].read()

    def size(self, name: str) -> int | None:
        try:
            return int(self._call("head_object", name, Key=self._key(name))["ContentLength"])
        except FileNotFoundError:
            return None

    def sha256(self, name: str) -> str:
        return _sha256_of(self._call("get_object", name, Key=self._key(name))["Body"])

    def write_bytes(self, name: str, data: bytes) -> None:
        self._call("put_object", name, Key=self._key(name), Body=data)

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """A local temporary file, uploaded as ``name`` in one PUT when the block succeeds."""
        with tempfile.TemporaryDirectory(prefix="srcore-stage-") as tmp:
            path = Path(tmp) / Path(name).name
            yield path
            with open(path, "rb") as fh:
                self._call("put_object", name, Key=self._key(name), Body=fh)

    def shards(self) -> list[str]:
        names = self._names(self._list(self.prefix + "/x" if self.prefix else "x"))
        return sorted(n for n in names if n.count("/") == 1 and n.endswith(".parquet"))

    def delete(self, name: str) -> None:
        self._call("delete_object", name, Key=self._key(name))

    def tidy(self) -> None:
        """Nothing to do: a bucket has no folders to leave empty."""

    def temporaries(self) -> list[Path]:
        return []  # a PUT that did not finish leaves no object


def _sha256_of(stream: Any) -> str:
    h = hashlib.sha256()
    with stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
