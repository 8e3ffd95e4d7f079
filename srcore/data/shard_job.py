"""One shard job of ``srcore data prepare``: a group of raw images -> one Parquet shard per scale.

A job runs wherever its executor puts it (``srcore.data.executors``): it reads each image once,
hashes the bytes it read (sha256), and from those hashes the shard's fingerprint. A shard that a
previous run already wrote with that fingerprint (and whose file still has its recorded sha256)
is kept as it is; otherwise the images are decoded, cut into HR/LR pairs and written atomically.
The driver (``srcore.data.prepare``) never reads an input: it records the hashes a job returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from srcore.config import PrepareParams
from srcore.data.image_io import decode_rgb
from srcore.data.patches import crop_starts, extract_pairs
from srcore.data.shards import encode_rows, file_sha256, write_shard
from srcore.errors import DataError
from srcore.storage import Folder, ObjectStore, StoreUnavailable, open_store

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "Recipe", "ShardJob", "ShardResult", "build_shard", "one_thread_each",
           "shard_intact"]

# Bump when the bytes written for the same input and parameters change.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Recipe:
    """What a shard's bytes depend on besides its images: the cut, the encoding, the format."""

    scales: tuple[int, ...]  # every scale of the run: their lcm is the HR modcrop multiple
    crop: int
    step: int
    thresh: int
    encoding: str
    rows_per_group: int

    @classmethod
    def of(cls, params: PrepareParams) -> Recipe:
        return cls(tuple(params.scales), params.crop_size, params.step, params.thresh_size, params.encoding,
                   params.rows_per_group)

    def fingerprint(self, scale: int, digests: Sequence[tuple[str, str | None]]) -> str:
        """The shard's identity: the recipe at ``scale`` and each image's (name, sha256)."""
        h = hashlib.sha256()
        h.update(json.dumps({"format": FORMAT_VERSION, "scale": scale, "crop": self.crop, "step": self.step,
                             "thresh": self.thresh, "encoding": self.encoding,
                             "rows_per_group": self.rows_per_group,
                             "modcrop": int(np.lcm.reduce(np.array(self.scales)))}, sort_keys=True).encode())
        for name, digest in digests:
            h.update(f"{name}:{digest or 'unreadable'};".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class ShardJob:
    """One image group and the shard files (one per scale) to make from it. Locations are
    folders or ``s3://``; relative folders resolve against ``cwd``, the driver's working
    directory, wherever the job runs."""

    index: int
    images: tuple[tuple[int, str], ...]  # (position in sources, file name there)
    sources: tuple[str, ...]
    shards: dict[int, str]  # scale -> shard file, relative to out
    known: dict[int, tuple[dict, ...]]  # scale -> manifest entries a previous run recorded for that file
    out: str
    cwd: str
    recipe: Recipe
    on_bad: str


@dataclass
class ShardResult:
    """What a job made: manifest entries per scale (``kept``: those already on disk), the images
    it rejected (None when it kept every shard without decoding) and the sha256 of each image's
    bytes as read, in job order (None: unreadable)."""

    index: int
    entries: dict[int, dict]
    bad: list[dict] | None
    digests: list[str | None]
    kept: tuple[int, ...] = field(default=())


def one_thread_each() -> None:
    """One compute thread per process: the pool (or Ray's one CPU per task) already uses every core."""
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def shard_intact(out: Folder | ObjectStore, name: str, entry: dict) -> bool:
    """The file is the one ``entry`` recorded: same size, then same sha256."""
    if out.size(name) != entry.get("bytes"):
        return False
    if out.sha256(name) != entry.get("sha256"):
        log.warning("%s: content does not match the manifest's sha256; rebuilding it", out.path(name))
        return False
    return True


def _read(src: Folder | ObjectStore, name: str) -> tuple[bytes | None, str | None]:
    """An image's bytes, or why they could not be read. An unreachable object store is not the
    image's fault: that error propagates (a Ray task retries it)."""
    try:
        return src.read_bytes(name), None
    except StoreUnavailable:
        raise
    except OSError as exc:
        return None, f"{src.path(name)}: cannot read it ({exc.strerror or exc})"


def _cut(data: bytes, path: str, job: ShardJob, scales: tuple[int, ...]
         ) -> tuple[dict[int, list[dict]] | None, str | None]:
    """One image's bytes -> rows per scale, or the reason it was rejected."""
    try:
        img = decode_rgb(data, path, convert=False)
    except (DataError, OSError) as exc:
        return None, str(exc)
    r = job.recipe
    h, w = img.shape[:2]
    if not (crop_starts(h, r.crop, r.step, r.thresh) and crop_starts(w, r.crop, r.step, r.thresh)):
        return None, f"{path}: {w}x{h} is smaller than one {r.crop}x{r.crop} sub-image"
    # every scale of the run, so that the HR modcrop (their lcm) is the same whichever are rebuilt
    pairs = extract_pairs(img, r.scales, r.crop, r.step, r.thresh)
    return {s: encode_rows(Path(path).stem, s, pairs[s], r.encoding) for s in scales}, None


def build_shard(job: ShardJob) -> ShardResult:
    """Worker: read and hash the group's images, keep the shards that already match, cut and
    write the others. Under ``on_bad=fail`` a rejected image leaves the group unwritten (every
    image is still checked, so that all bad files are reported at once)."""
    sources = [open_store(s, base=job.cwd) for s in job.sources]
    dest = open_store(job.out, base=job.cwd)
    read = [_read(sources[i], name) for i, name in job.images]
    digests = [hashlib.sha256(data).hexdigest() if data is not None else None for data, _ in read]
    named = [(Path(name).stem, d) for (_, name), d in zip(job.images, digests, strict=True)]
    entries: dict[int, dict] = {}
    todo: dict[int, dict] = {}
    for s, file in job.shards.items():
        fp = job.recipe.fingerprint(s, named)
        kept = next((e for e in job.known.get(s, ())
                     if e.get("fingerprint") == fp and shard_intact(dest, file, e)), None)
        if kept is not None:
            entries[s] = kept
        else:
            todo[s] = {"file": file, "fingerprint": fp}
    kept_scales = tuple(sorted(entries))
    if not todo:
        return ShardResult(job.index, entries, None, digests, kept_scales)
    rows: dict[int, list[dict]] = {s: [] for s in todo}
    images: list[str] = []
    bad: list[dict] = []
    for ((i, name), (data, reason)) in zip(job.images, read, strict=True):
        per_scale = None
        if data is not None:
            per_scale, reason = _cut(data, sources[i].path(name), job, tuple(todo))
        if reason is not None:
            bad.append({"file": Path(name).stem, "reason": reason, "shard": job.index})
            continue
        if bad and job.on_bad == "fail":
            continue
        images.append(Path(name).stem)
        for s in todo:
            rows[s].extend(per_scale[s])
    if bad and job.on_bad == "fail":
        return ShardResult(job.index, {}, bad, digests)
    for s, planned in todo.items():
        with dest.staged(planned["file"]) as path:
            write_shard(path, rows[s], job.recipe.encoding, job.recipe.rows_per_group)
            digest, size = file_sha256(path), os.path.getsize(path)
        entries[s] = {**planned, "sha256": digest, "rows": len(rows[s]), "images": images, "bytes": size}
    return ShardResult(job.index, entries, bad, digests, kept_scales)
