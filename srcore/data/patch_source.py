"""Where training reads the prepared patches: names of the prepared layout (``manifest.json``,
``x4/shard-00000.parquet``) mapped to locations every training process can open.

Two kinds of source, chosen by ``loader.source``:

- ``prepared``: ``prepare.out`` as it is, a local folder (on a cluster: a mount every node has) or
  an ``s3://bucket/prefix`` that ``srcore data prepare`` wrote to;
- ``dvc``: the version of ``prepare.out`` that ``dvc.lock`` pins, read where ``dvc push`` put it:
  the DVC remote's content-addressed objects (``pushed_patches``). No
  machine needs a local copy, and a run reads exactly the bytes the lock file names.

A source travels to Ray workers as a plain dict (``as_config``/``from_config``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srcore.data.shards import MANIFEST
from srcore.errors import DataError
from srcore.storage import StoreUnavailable, is_uri, join, open_store, read_bytes

__all__ = ["PatchSource", "as_source", "patch_source", "pushed_patches"]


@dataclass(frozen=True)
class PatchSource:
    """``shown`` names the source in messages; ``root`` is the folder or prefix names are joined to,
    unless ``files`` maps every name to its own location (listed by the object ``listing``); ``pin``
    is the content hash that fixes the version (DVC's directory md5), when there is one."""

    shown: str
    root: str
    files: dict[str, str] | None = None
    listing: str | None = None
    pin: str | None = None

    @property
    def uri(self) -> str:
        """Where the source is, for records (an MLflow input dataset): the folder, prefix or listing."""
        return self.listing or self.root

    def location(self, name: str) -> str:
        if self.files is None:
            return open_store(self.root).location(name)
        try:
            return self.files[name]
        except KeyError:
            raise FileNotFoundError(f"{self.shown}: no {name}") from None

    def shard_names(self) -> set[str]:
        """The shard files there are (one listing of the folder or prefix)."""
        if self.files is not None:
            return {n for n in self.files if n.endswith(".parquet")}
        return set(open_store(self.root).shards())

    def manifest_bytes(self) -> bytes | None:
        """The manifest's bytes, or None where there is none."""
        try:
            return read_bytes(self.location(MANIFEST))
        except FileNotFoundError:
            return None

    def manifest(self) -> dict | None:
        """The manifest, or None where there is none; unreadable -> DataError."""
        where = join(self.shown, MANIFEST)
        try:
            data = self.manifest_bytes()
            return None if data is None else json.loads(data)
        except StoreUnavailable:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: unreadable manifest ({exc}); run `srcore data prepare` again"
                            ) from None

    def as_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PatchSource:
        return cls(**config)


def as_source(where: PatchSource | dict | str | os.PathLike) -> PatchSource:
    """A source from what callers hold: a source, its config dict, or a folder/prefix."""
    if isinstance(where, PatchSource):
        return where
    if isinstance(where, dict):
        return PatchSource.from_config(where)
    where = str(where)
    return PatchSource(where, where if is_uri(where) else os.path.abspath(where))


def patch_source(out: str, source: str = "prepared", repo: str | os.PathLike = ".") -> PatchSource:
    """The source ``loader.source`` names for ``prepare.out``; ``dvc`` resolves the pinned version
    in the DVC remote (``repo``: the checkout holding ``dvc.lock`` and ``.dvc/config``)."""
    if source == "dvc":
        return pushed_patches(out, repo)
    return as_source(out)


def _locked_md5(repo: Path, out: str) -> str:
    """The directory md5 ``dvc.lock`` records for the stage output ``out``."""
    import yaml

    lock = repo / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except FileNotFoundError:
        raise DataError(f"{lock} not found: `dvc repro prepare` records the patches' version there; run it "
                        "(and `dvc push`) first") from None
    for stage in stages.values():
        for o in stage.get("outs", []):
            if Path(o.get("path", "")) == Path(out) and str(o.get("md5", "")).endswith(".dir"):
                return o["md5"]
    raise DataError(f"{lock} pins no folder {out}; run `dvc repro prepare` and `dvc push`, or set "
                    "loader.source: prepared")


def pushed_patches(out: str, repo: str | os.PathLike = ".") -> PatchSource:
    """The prepared patches at ``out`` (a DVC stage output) as ``dvc.lock`` pins them, read from the
    DVC remote: each file is the remote's content-addressed object, listed by the pinned
    directory object. Nothing local is read but ``dvc.lock`` and DVC's config."""
    import dvc.api
    from dvc.exceptions import DvcException

    root = Path(repo)
    if Path(out).is_absolute():
        out = os.path.relpath(out, root.resolve())
    pin = _locked_md5(root, out)
    try:
        url = dvc.api.get_url(out, repo=str(root))
    except DvcException as exc:
        raise DataError(f"{out}: no DVC remote to read the pinned patches from ({str(exc).strip()[:200]}); "
                        "add one (`dvc remote add -d NAME s3://...`) and `dvc push`") from None
    try:
        listing = json.loads(read_bytes(url))
    except FileNotFoundError:
        raise DataError(f"{url}: the patches dvc.lock pins ({out}, {pin}) are not in the DVC remote; "
                        "run `dvc push`") from None
    objects = url.rsplit("/", 2)[0]  # the remote's files/md5 folder: objects are <md5[:2]>/<md5[2:]>
    files = {e["relpath"]: join(objects, f"{e['md5'][:2]}/{e['md5'][2:]}") for e in listing}
    return PatchSource(f"{out} @ {url}", objects, files, url, pin)
