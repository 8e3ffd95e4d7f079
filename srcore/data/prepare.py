"""``srcore data prepare``: raw HR folder -> ``<out>/x{s}/shard-*.parquet`` + ``manifest.json``.

Images are taken in sorted order and grouped into shards of ``images_per_shard`` images, so a
shard's content depends only on its own images and the parameters: its fingerprint. A rerun
skips every shard whose fingerprint is recorded and whose file still has the recorded sha256
(resume after an interrupt, or after changing one image: only that image's shard is rebuilt; a
corrupted shard is rebuilt too). Each worker builds whole shards (decode, cut, encode, compress,
write atomically), so the parent only records them: it rewrites the manifest after each
finished shard, with ``"complete": false`` until the run ends well. Training reads only the
shards a complete manifest lists. Output bytes (shards and manifest) do not depend on the number
of workers or on the run.

Pool workers die with the command: on Linux the kernel kills them when the parent dies
(``PR_SET_PDEATHSIG``), elsewhere a thread in each worker watches the parent's pid. Temporary
files an interrupted run left behind are removed when the next run starts.

The same shard job runs on either executor (``prepare.executor``): ``local``, a process pool on
this machine, or ``ray``, one Ray task per shard on a cluster (``srcore.data.prepare_ray``); the
bytes written do not depend on which. Input and output are a local folder or ``s3://bucket/prefix``
(``srcore.storage``); on a cluster a local folder must be mounted at the same path on every node.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from srcore import __version__
from srcore.config import PrepareParams
from srcore.data.image_io import decode_rgb
from srcore.data.patches import crop_starts, extract_pairs
from srcore.data.shards import MANIFEST, encode_rows, file_sha256, write_shard
from srcore.errors import DataError
from srcore.storage import Folder, ObjectStore, StoreUnavailable, is_s3, open_store

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "MANIFEST", "LocalPool", "PrepareSummary", "ShardExecutor", "dvc_hash_of",
           "executor_for", "one_thread_each", "prepare"]

# Bump when the bytes written for the same input and parameters change.
FORMAT_VERSION = 2
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# How a run is executed, not what it makes: left out of the manifest, so that its bytes do not
# depend on the executor or the number of workers.
_RUN_ONLY = {"workers", "executor", "address"}


@dataclass
class PrepareSummary:
    out: Path | str  # a local folder, or the s3:// location
    images: int
    rows: dict[int, int]
    built_shards: int
    reused_shards: int
    bad: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class _ShardJob:
    """One image group and the shard files (one per scale) still to build from it. ``source``
    and ``out`` are locations (folder or ``s3://``); relative folders resolve against ``cwd``,
    the driver's working directory, wherever the job runs."""

    index: int
    names: tuple[str, ...]  # image files, relative to source
    shards: dict[int, dict]  # scale -> {"file": path relative to out, "fingerprint": ...}
    source: str
    out: str
    cwd: str
    crop: int
    step: int
    thresh: int
    encoding: str
    rows_per_group: int
    on_bad: str


def _cut(src: Folder | ObjectStore, name: str, job: _ShardJob
         ) -> tuple[dict[int, list[dict]] | None, str | None]:
    """One image -> rows per scale, or the reason it was rejected. An unreachable object store
    is not the image's fault: that error propagates (a Ray task retries it)."""
    path = src.path(name)
    try:
        img = decode_rgb(src.read_bytes(name), path, convert=False)
    except StoreUnavailable:
        raise
    except (DataError, OSError) as exc:
        return None, str(exc)
    h, w = img.shape[:2]
    fits = crop_starts(h, job.crop, job.step, job.thresh) and crop_starts(w, job.crop, job.step, job.thresh)
    if not fits:
        return None, f"{path}: {w}x{h} is smaller than one {job.crop}x{job.crop} sub-image"
    pairs = extract_pairs(img, tuple(sorted(job.shards)), job.crop, job.step, job.thresh)
    return {s: encode_rows(Path(path).stem, s, p, job.encoding) for s, p in pairs.items()}, None


def _build_shard(job: _ShardJob) -> tuple[int, dict[int, dict], list[dict]]:
    """Worker: cut every image of the group and write its shards; returns the manifest entries
    and the rejected images. Under ``on_bad=fail`` a rejected image leaves the group unwritten
    (every image is still checked, so that all bad files are reported at once)."""
    rows: dict[int, list[dict]] = {s: [] for s in job.shards}
    images: list[str] = []
    bad: list[dict] = []
    src, dest = open_store(job.source, base=job.cwd), open_store(job.out, base=job.cwd)
    for name in job.names:
        per_scale, reason = _cut(src, name, job)
        if reason is not None:
            bad.append({"file": Path(name).stem, "reason": reason, "shard": job.index})
            continue
        if bad and job.on_bad == "fail":
            continue
        images.append(Path(name).stem)
        for s in job.shards:
            rows[s].extend(per_scale[s])
    if bad and job.on_bad == "fail":
        return job.index, {}, bad
    entries = {}
    for s, planned in job.shards.items():
        with dest.staged(planned["file"]) as path:
            write_shard(path, rows[s], job.encoding, job.rows_per_group)
            digest, size = file_sha256(path), path.stat().st_size
        entries[s] = {**planned, "sha256": digest, "rows": len(rows[s]), "images": images, "bytes": size}
    return job.index, entries, bad


def _init_worker(parent: int) -> None:
    _die_with_parent(parent)
    one_thread_each()


def one_thread_each() -> None:
    """One compute thread per process: the pool (or Ray's one CPU per task) already uses every core."""
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _die_with_parent(parent: int) -> None:
    """End this worker when process ``parent`` dies (SIGTERM or SIGKILL included), so that no
    orphan keeps writing shards. The standard library has no such option, hence prctl."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _shard_intact(out: Folder | ObjectStore, name: str, entry: dict) -> bool:
    """The file is the one the manifest recorded: same size, then same sha256."""
    if out.size(name) != entry.get("bytes"):
        return False
    if out.sha256(name) != entry.get("sha256"):
        log.warning("%s: content does not match the manifest's sha256; rebuilding it", out.path(name))
        return False
    return True


def _list_inputs(folder: Folder | ObjectStore) -> list[str]:
    if not folder.is_folder():
        raise DataError(f"input folder {folder} not found; create it (srcore data sample) or pass --input")
    files = folder.files()
    if not files:
        raise DataError(f"input folder {folder} is empty; put HR images there")
    return files


def _fingerprint(params: PrepareParams, scale: int, names_and_hashes: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "scale": scale, "crop": params.crop_size,
                         "step": params.step, "thresh": params.thresh_size, "encoding": params.encoding,
                         "rows_per_group": params.rows_per_group,
                         # the HR modcrop multiple (lcm of the scales) decides the crop grid
                         "modcrop": int(np.lcm.reduce(np.array(params.scales)))},
                        sort_keys=True).encode())
    for name, digest in names_and_hashes:
        h.update(f"{name}:{digest};".encode())
    return h.hexdigest()


def dvc_hash_of(folder: Path, dvc_file: Path = Path("data.dvc")) -> str | None:
    """The DVC md5 that ``data.dvc`` records for ``folder`` (or one of its parents), if any."""
    if not dvc_file.is_file():
        return None
    try:
        spec = yaml.safe_load(dvc_file.read_text()) or {}
    except yaml.YAMLError:
        return None
    for out in spec.get("outs", []):
        tracked = (dvc_file.parent / out.get("path", "")).resolve()
        if folder.resolve() == tracked or tracked in folder.resolve().parents:
            return out.get("md5")
    return None


def _load_manifest(out: Folder | ObjectStore) -> dict:
    try:
        return json.loads(out.read_bytes(MANIFEST))
    except StoreUnavailable:
        raise
    except (OSError, ValueError):
        return {}


def _write_manifest(out: Folder | ObjectStore, manifest: dict) -> None:
    out.write_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


Built = tuple[int, dict[int, dict], list[dict]]  # shard index, manifest entries per scale, rejected images


class ShardExecutor(Protocol):
    """Runs shard jobs somewhere and yields each result as it finishes (any order). Closing the
    iterator early stops the work still outstanding."""

    def run(self, jobs: list[_ShardJob]) -> Iterator[Built]: ...


class LocalPool:
    """Shard jobs in a process pool on this machine (``workers`` processes, 0 = one per core)."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1

    def run(self, jobs: list[_ShardJob]) -> Iterator[Built]:
        workers = min(self.workers, len(jobs))
        if workers <= 1:
            yield from map(_build_shard, jobs)
            return
        # spawn: forking a parent that already runs numba/torch threads is not safe.
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            yield from pool.imap_unordered(_build_shard, jobs)


def executor_for(params: PrepareParams) -> ShardExecutor:
    """The executor ``params.executor`` names."""
    if params.executor == "ray":
        from srcore.data.prepare_ray import RayTasks

        return RayTasks(params.address)
    return LocalPool(params.workers)


def prepare(params: PrepareParams, on_progress: Callable[[int], None] | None = None,
            on_total: Callable[[int, int], None] | None = None,
            executor: ShardExecutor | None = None) -> PrepareSummary:
    """Build (or update) the shards described by ``params``; see the module docstring.

    ``on_total(images, shards)`` is called once with the work left; ``on_progress(images)`` once
    per finished shard, with its number of images. ``executor`` defaults to ``executor_for(params)``.
    """
    src, out = open_store(params.input), open_store(params.out)
    files = _list_inputs(src)
    _remove_temporaries(out)
    hashes = [(Path(n).stem, src.sha256(n)) for n in files]
    n_per = params.images_per_shard
    groups = [list(range(i, min(i + n_per, len(files)))) for i in range(0, len(files), n_per)]
    old = _load_manifest(out)
    old_shards = {(int(s), e["file"]): e
                  for s, v in old.get("scales", {}).items() for e in v.get("shards", [])}
    bad: list[dict] = []
    built = reused = 0
    manifest = {
        "format": FORMAT_VERSION, "code_version": __version__, "complete": False,
        "input": {"path": str(src),
                  "dvc_md5": None if is_s3(params.input) else dvc_hash_of(Path(params.input)),
                  "sha256": hashlib.sha256("".join(f"{n}:{d};" for n, d in hashes).encode()).hexdigest(),
                  "images": len(files)},
        "params": params.model_dump(mode="json", exclude=_RUN_ONLY),
        "scales": {str(s): {"rows": 0, "shards": []} for s in params.scales},
        "bad": bad,
    }
    todo: list[tuple[int, dict[int, dict]]] = []
    for k, group in enumerate(groups):
        plan = {}
        for s in params.scales:
            name = f"x{s}/shard-{k:05d}.parquet"
            fp = _fingerprint(params, s, [hashes[i] for i in group])
            prev = old_shards.get((s, name))
            if prev and prev.get("fingerprint") == fp and _shard_intact(out, name, prev):
                manifest["scales"][str(s)]["shards"].append(prev)
                bad.extend(b for b in old.get("bad", []) if b.get("shard") == k and b not in bad)
                reused += 1
            else:
                plan[s] = {"file": name, "fingerprint": fp}
        if plan:
            todo.append((k, plan))
    if on_total:
        on_total(sum(len(groups[k]) for k, _ in todo), len(todo))

    jobs = [_ShardJob(k, tuple(files[i] for i in groups[k]), plan, params.input, params.out, os.getcwd(),
                      params.crop_size, params.step, params.thresh_size, params.encoding,
                      params.rows_per_group, params.on_bad) for k, plan in todo]
    results = (executor or executor_for(params)).run(jobs) if jobs else iter(())
    try:
        for k, entries, rejected in results:
            if params.on_bad == "skip":
                for b in rejected:
                    log.warning("skipping %s", b["reason"])
            bad.extend(rejected)
            for s, entry in entries.items():
                manifest["scales"][str(s)]["shards"].append(entry)
                built += 1
            _write_manifest(out, _finalised(manifest))  # each finished shard survives an interrupt
            if on_progress:
                on_progress(len(groups[k]))
    finally:
        close = getattr(results, "close", None)
        if close:
            close()
    manifest = _finalised(manifest)
    if bad and params.on_bad == "fail":
        reasons = "; ".join(b["reason"] for b in manifest["bad"])
        raise DataError(f"{len(bad)} bad input image(s), --on-bad fail: {reasons} "
                        "(fix or remove them, or use --on-bad skip to leave them out)")
    manifest["complete"] = True
    _write_manifest(out, manifest)
    _remove_stale(out, manifest)
    return PrepareSummary(params.out if is_s3(params.out) else Path(params.out), len(files),
                          {int(s): v["rows"] for s, v in manifest["scales"].items()},
                          built, reused, bad)


def _finalised(manifest: dict) -> dict:
    for v in manifest["scales"].values():
        v["shards"].sort(key=lambda e: e["file"])
        v["rows"] = sum(e["rows"] for e in v["shards"])
    manifest["bad"].sort(key=lambda b: (b.get("shard", -1), b["file"]))  # shards finish in any order
    return manifest


def _remove_stale(out: Folder | ObjectStore, manifest: dict) -> None:
    """Delete shard files that the manifest no longer lists (removed scales, fewer images)."""
    keep = {e["file"] for v in manifest["scales"].values() for e in v["shards"]}
    for name in out.shards():
        if name not in keep:
            out.delete(name)
    out.tidy()


def _remove_temporaries(out: Folder | ObjectStore) -> None:
    """Delete the half-written files (``.<name>.*.tmp``) an interrupted run left behind."""
    for tmp in out.temporaries():
        log.info("removing %s, left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)
