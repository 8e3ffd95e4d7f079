"""``srcore data prepare``: raw HR folders -> ``<out>/x{s}/shard-*.parquet`` + ``manifest.json``.

Images are taken in order (input by input, each input sorted: ``srcore.data.inputs``) and grouped
into shards of ``images_per_shard`` images, so a shard's content depends only on its own images
and the parameters: its fingerprint. A shard job (``srcore.data.shard_job``) reads and hashes its
own images and keeps a shard that a previous run wrote with the same fingerprint, if the file still
has the recorded sha256. So a rerun builds only what is missing or stale: the shards an interrupt
left unfinished, the shard of a changed image (at every scale), a corrupted shard file.

This driver reads no input image. It plans from one listing per input (size + mtime, or size +
LastModified): a group whose images all still have the key under which an earlier run recorded their
sha256 is checked here (fingerprint, then the shard's size and sha256) and skipped; any other group
goes to a job, which decides. Finished groups go to the journal (``srcore.data.journal``), a few
segments written once each, so the driver's work per shard is constant. The manifest is written
twice: with ``"complete": false`` before the first shard is touched (training refuses it), then
once, atomically, when the run ends. Manifest and shard bytes depend neither on the number of
workers, nor on the executor, nor on the run.

Jobs run in a process pool on this machine or as Ray tasks on a cluster (``prepare.executor``:
``srcore.data.executors``). Inputs and output are folders or ``s3://bucket/prefix``
(``srcore.storage``); on a cluster a local folder must be mounted at the same path on every node.
Temporary files an interrupted run left behind are removed when the next run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from srcore import __version__
from srcore.config import PrepareParams
from srcore.data.executors import ShardExecutor, executor_for
from srcore.data.inputs import InputImage, list_images
from srcore.data.journal import Journal
from srcore.data.shard_job import FORMAT_VERSION, Recipe, ShardJob, ShardResult, shard_intact
from srcore.data.shards import MANIFEST
from srcore.errors import DataError
from srcore.storage import Folder, ObjectStore, StoreUnavailable, is_s3, open_store

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "MANIFEST", "PrepareSummary", "dvc_hash_of", "prepare"]

# How a run is executed, not what it makes: left out of the manifest, so that its bytes do not
# depend on the executor or the number of workers.
_RUN_ONLY = {"workers", "executor", "address"}

Candidates = dict[str, list[tuple[dict, list[dict]]]]  # shard file -> (entry, its group's rejected images)


@dataclass
class PrepareSummary:
    out: Path | str  # a local folder, or the s3:// location
    images: int
    rows: dict[int, int]
    built_shards: int
    reused_shards: int
    bad: list[dict] = field(default_factory=list)


@dataclass
class _Ledger:
    """What the run has so far: shard entries per scale, rejected images per group, and the
    sha256 of each input image (None until known)."""

    shards: dict[int, list[dict]]
    bad: dict[int, list[dict]]
    digests: list[str | None]
    built: int = 0
    reused: int = 0

    def keep(self, group: int, scale: int, entry: dict, bad: list[dict]) -> None:
        self.shards[scale].append(entry)
        self.bad[group] = bad
        self.reused += 1


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


def prepare(params: PrepareParams, on_progress: Callable[[int], None] | None = None,
            on_total: Callable[[int, int], None] | None = None,
            executor: ShardExecutor | None = None) -> PrepareSummary:
    """Build (or update) the shards described by ``params``; see the module docstring.

    ``on_total(images, shards)`` is called once with the work left; ``on_progress(images)`` once
    per finished shard group, with its number of images. ``executor`` defaults to
    ``executor_for(params)``.
    """
    images = list_images(params.inputs)
    out = open_store(params.out)
    _remove_temporaries(out)
    journal = Journal(params.out)
    recorded = journal.load()
    candidates = _candidates(_load_manifest(out), recorded.groups)
    ledger = _Ledger({s: [] for s in params.scales}, {}, [recorded.digest(img.location, img.name, img.key)
                                                         for img in images])
    recipe = Recipe.of(params)
    n = params.images_per_shard
    groups = [range(i, min(i + n, len(images))) for i in range(0, len(images), n)]
    jobs = [job for k, group in enumerate(groups)
            if (job := _plan(k, group, images, recipe, params, candidates, ledger, out)) is not None]
    if on_total:
        on_total(sum(len(groups[j.index]) for j in jobs), len(jobs))
    header = _header(params, len(images))
    if jobs:  # shards are about to change: training must not take the old manifest meanwhile
        _write_manifest(out, _manifest(header, ledger, images))
    results = (executor or executor_for(params)).run(jobs) if jobs else iter(())
    try:
        for result in results:
            _record(result, images, groups[result.index], candidates, ledger, journal, params.on_bad)
            if on_progress:
                on_progress(len(groups[result.index]))
    finally:
        close = getattr(results, "close", None)
        if close:
            close()
        journal.flush()
    manifest = _manifest(header, ledger, images)
    if manifest["bad"] and params.on_bad == "fail":
        _write_manifest(out, manifest)
        reasons = "; ".join(b["reason"] for b in manifest["bad"])
        raise DataError(f"{len(manifest['bad'])} bad input image(s), --on-bad fail: {reasons} "
                        "(fix or remove them, or use --on-bad skip to leave them out)")
    manifest["complete"] = True
    _write_manifest(out, manifest)
    journal.settle([[img.location, img.name, img.key, d]
                    for img, d in zip(images, ledger.digests, strict=True) if d])
    _remove_stale(out, manifest)
    return PrepareSummary(params.out if is_s3(params.out) else Path(params.out), len(images),
                          {int(s): v["rows"] for s, v in manifest["scales"].items()},
                          ledger.built, ledger.reused, manifest["bad"])


def _candidates(old: dict, groups: list[dict]) -> Candidates:
    """Every shard entry earlier runs recorded, by file: the last manifest's, then the journal's."""
    old_bad: dict[int, list[dict]] = {}
    for b in old.get("bad", []):
        old_bad.setdefault(b.get("shard", -1), []).append(b)
    found: Candidates = {}
    for v in old.get("scales", {}).values():
        for e in v.get("shards", []):
            found.setdefault(e["file"], []).append((e, old_bad.get(_group_of(e["file"]), [])))
    for g in groups:
        for e in g.get("entries", []):
            found.setdefault(e["file"], []).append((e, g.get("bad", [])))
    for file, entries in found.items():  # the same shard recorded twice is checked once
        unique = {(e.get("fingerprint"), e.get("sha256")): (e, bad) for e, bad in reversed(entries)}
        found[file] = list(reversed(unique.values()))
    return found


def _group_of(file: str) -> int:
    try:
        return int(file.rsplit("-", 1)[-1].split(".", 1)[0])
    except ValueError:
        return -1


def _plan(k: int, group: range, images: list[InputImage], recipe: Recipe, params: PrepareParams,
          candidates: Candidates, ledger: _Ledger, out: Folder | ObjectStore) -> ShardJob | None:
    """Skip the group's shards that provably match (every image hash known from its key), or
    the job that decides the rest."""
    digests = [ledger.digests[i] for i in group]
    named = [(images[i].stem, d) for i, d in zip(group, digests, strict=True)]
    shards: dict[int, str] = {}
    known: dict[int, tuple[dict, ...]] = {}
    for s in recipe.scales:
        file = f"x{s}/shard-{k:05d}.parquet"
        found = candidates.get(file, [])
        if all(digests):
            fp = recipe.fingerprint(s, named)
            hit = next(((e, bad) for e, bad in found
                        if e.get("fingerprint") == fp and shard_intact(out, file, e)), None)
            if hit:
                ledger.keep(k, s, *hit)
                continue
        else:
            known[s] = tuple(e for e, _ in found)
        shards[s] = file
    if not shards:
        return None
    return ShardJob(k, tuple((images[i].source, images[i].name) for i in group), tuple(params.inputs), shards,
                    known, params.out, os.getcwd(), recipe, params.on_bad)


def _record(result: ShardResult, images: list[InputImage], group: range, candidates: Candidates,
            ledger: _Ledger, journal: Journal, on_bad: str) -> None:
    """A finished job into the ledger and the journal."""
    for i, digest in zip(group, result.digests, strict=True):
        ledger.digests[i] = digest
    if result.bad is None:  # every shard kept: its rejected images are the ones recorded with it
        entry = next(iter(result.entries.values()))
        bad = next((b for e, b in candidates.get(entry["file"], [])
                    if e["fingerprint"] == entry["fingerprint"]), [])
    else:
        bad = result.bad
        if on_bad == "skip":
            for b in bad:
                log.warning("skipping %s", b["reason"])
    ledger.bad[result.index] = bad
    for s, entry in result.entries.items():
        ledger.shards[s].append(entry)
        if s in result.kept:
            ledger.reused += 1
        else:
            ledger.built += 1
    journal.add({"shard": result.index, "entries": list(result.entries.values()), "bad": bad,
                 "inputs": [[images[i].location, images[i].name, images[i].key, d]
                            for i, d in zip(group, result.digests, strict=True) if d]})


def _header(params: PrepareParams, n_images: int) -> dict:
    paths = [str(open_store(loc)) for loc in params.inputs]
    md5s = [None if is_s3(loc) else dvc_hash_of(Path(loc)) for loc in params.inputs]
    one = isinstance(params.input, str)  # a single input keeps the manifest's one-input form
    return {"format": FORMAT_VERSION, "code_version": __version__, "complete": False,
            "input": {"path": paths[0] if one else paths, "dvc_md5": md5s[0] if one else md5s,
                      "sha256": None, "images": n_images},
            "params": params.model_dump(mode="json", exclude=_RUN_ONLY)}


def _manifest(header: dict, ledger: _Ledger, images: list[InputImage]) -> dict:
    """The manifest of what the ledger holds, in an order that does not depend on the run."""
    scales = {}
    for s, entries in ledger.shards.items():
        entries.sort(key=lambda e: e["file"])
        scales[str(s)] = {"rows": sum(e["rows"] for e in entries), "shards": entries}
    bad = sorted((b for v in ledger.bad.values() for b in v), key=lambda b: (b.get("shard", -1), b["file"]))
    digest = None
    if all(ledger.digests):
        named = "".join(f"{img.stem}:{d};" for img, d in zip(images, ledger.digests, strict=True))
        digest = hashlib.sha256(named.encode()).hexdigest()
    return {**header, "input": {**header["input"], "sha256": digest}, "scales": scales, "bad": bad}


def _load_manifest(out: Folder | ObjectStore) -> dict:
    try:
        return json.loads(out.read_bytes(MANIFEST))
    except StoreUnavailable:
        raise
    except (OSError, ValueError):
        return {}


def _write_manifest(out: Folder | ObjectStore, manifest: dict) -> None:
    out.write_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


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
