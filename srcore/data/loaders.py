"""Streaming training batches from Parquet shards, for torch DataLoader/DDP and for Ray Data.

Work is split in units of one Parquet row group. Each epoch the units are shuffled with a
seed shared by all ranks and dealt round-robin to ranks, then to DataLoader workers, so no
sample is read twice per epoch. Every rank stops after the same number of samples
(``samples_per_rank``, computed from the shard metadata alone), so DDP ranks never wait on
each other at the end of an epoch. A shuffle buffer mixes samples across row groups, and each
sample gets a random aligned crop (LR ``patch_size``, HR ``patch_size * scale``), flips and a
90-degree rotation.

Shards are read where they are (a local folder, an ``s3://`` prefix, the DVC remote: ``srcore.storage``
and ``srcore.data.patch_source``), by range: a worker fetches a shard's footer once, then only the
column chunks of its own row groups.

``ray_dataset`` is the same data for Ray Train's own ingest: the run's epochs of units as one
dataset, read and cropped by a batch transform with the same crop and augmentation;
``ray.train.get_dataset_shard`` then splits it into equal streams per rank.
"""

from __future__ import annotations

import functools
import math
import os
import random
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from srcore.data.patch_source import PatchSource, as_source
from srcore.data.shards import MANIFEST, decode_patch, shard_encoding
from srcore.errors import DataError
from srcore.storage import is_uri, join, open_input_file

__all__ = ["ShardPairs", "ShardSet", "UnitPlan", "augment_pair", "random_crop_pair", "ray_dataset",
           "read_unit_crops", "samples_per_rank", "shard_files", "shard_set", "training_sample"]


@dataclass(frozen=True)
class _Unit:
    file: str
    group: int
    rows: int


@dataclass(frozen=True)
class ShardSet:
    """The shards of one scale that a complete manifest vouches for, as every process opens them
    (absolute local paths or URIs), with what the manifest says of them: rows per shard, rows per
    row group and the patch encoding. Units of work come from these numbers alone, so no rank reads
    a shard's footer before it reads the shard."""

    root: str
    files: tuple[str, ...]
    rows: tuple[int, ...]
    rows_per_group: int
    encoding: str

    def units(self) -> list[_Unit]:
        # pyarrow writes ``rows_per_group`` rows per row group, the rest in the last one
        per = self.rows_per_group
        return [_Unit(f, g, min(per, n - g * per)) for f, n in zip(self.files, self.rows, strict=True)
                for g in range(math.ceil(n / per))]


def shard_set(source: PatchSource | dict | str | os.PathLike, scale: int) -> ShardSet:
    """The shards of ``scale`` in a prepared folder, prefix or other source (``srcore.data.patch_source``),
    and only those.

    Refuses a source without a manifest, a manifest of a run that did not finish (interrupted, or
    stopped by ``--on-bad fail``) and a listed shard that is missing (one listing, not a request per
    shard), so training never reads shards the manifest does not vouch for.
    """
    source = as_source(source)
    path = join(source.shown, MANIFEST)
    rerun = f"run `srcore data prepare` (with scale {scale}) to finish it"
    manifest = source.manifest()
    if manifest is None:
        raise DataError(f"no shards in {source.shown} ({MANIFEST} not found); "
                        f"run `srcore data prepare` (with scale {scale}) first")
    if manifest.get("complete") is not True:
        raise DataError(f"{path}: the prepare run that wrote it did not finish; {rerun}")
    entries = manifest.get("scales", {}).get(str(scale), {}).get("shards", [])
    if not entries:
        raise DataError(f"no shards for x{scale} in {path}; run `srcore data prepare` with scale {scale}")
    present = source.shard_names()
    missing = [join(source.shown, e["file"]) for e in entries if e["file"] not in present]
    if missing:
        raise DataError(f"{missing[0]}: listed in {path} but missing ({len(missing)} missing); {rerun}")
    settings = manifest.get("params") or {}
    return ShardSet(source.shown, tuple(source.location(e["file"]) for e in entries),
                    tuple(int(e["rows"]) for e in entries), int(settings.get("rows_per_group", 1 << 30)),
                    str(settings.get("encoding", "raw")))


def shard_files(root: str | os.PathLike, scale: int) -> list[Path] | list[str]:
    """The files of :func:`shard_set` as given: paths under ``root`` for a folder, URIs for a store."""
    files = shard_set(root, scale).files
    if is_uri(root):
        return list(files)
    return [Path(root) / Path(f).relative_to(Path(root).resolve()) for f in files]


def _units(files: Sequence[str | os.PathLike]) -> list[_Unit]:
    """Units read from each shard's footer (shards given without their manifest)."""
    units = []
    for f in files:
        meta = pq.ParquetFile(open_input_file(f)).metadata
        units += [_Unit(str(f), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return units


def _deal(units: list[_Unit], epoch: int, seed: int, rank: int, world: int) -> list[_Unit]:
    order = _epoch_order(len(units), seed, epoch)
    return [units[i] for i in order[rank::world]]


def samples_per_rank(units: list[_Unit], epoch: int, seed: int, world: int) -> int:
    """The same number for every rank: the smallest rank's share of this epoch's units."""
    return min(sum(u.rows for u in _deal(units, epoch, seed, r, world)) for r in range(world))


def random_crop_pair(hr: np.ndarray, lr: np.ndarray, patch: int, scale: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Aligned random crop: LR ``patch`` x ``patch`` and the HR window ``scale`` times larger."""
    h, w = lr.shape[:2]
    if h < patch or w < patch:
        raise DataError(f"patch_size {patch} is larger than the stored LR sub-images ({h}x{w}); "
                        "lower loader.patch_size or prepare larger crops")
    y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
    return (hr[y * scale:(y + patch) * scale, x * scale:(x + patch) * scale], lr[y:y + patch, x:x + patch])


def augment_pair(hr: np.ndarray, lr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flips and transpose (the 8 dihedral transforms)."""
    if rng.random() < 0.5:
        hr, lr = hr[:, ::-1], lr[:, ::-1]
    if rng.random() < 0.5:
        hr, lr = hr[::-1], lr[::-1]
    if rng.random() < 0.5:
        hr, lr = hr.transpose(1, 0, 2), lr.transpose(1, 0, 2)
    return hr, lr


def training_sample(hr: np.ndarray, lr: np.ndarray, patch: int, scale: int, rng: np.random.Generator,
                    augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One stored pair -> (lr, hr) training crops: aligned random crop, optional flips/rotation,
    float32 CHW in [0, 1]. The one recipe behind both loader back-ends."""
    hr, lr = random_crop_pair(hr, lr, patch, scale, rng)
    if augment:
        hr, lr = augment_pair(hr, lr, rng)
    return (np.ascontiguousarray(lr.transpose(2, 0, 1), dtype=np.float32) / 255,
            np.ascontiguousarray(hr.transpose(2, 0, 1), dtype=np.float32) / 255)


_PAIR_COLUMNS = ["hr", "hr_h", "hr_w", "lr", "lr_h", "lr_w"]


# Row groups fetched ahead of the one being decoded, for shards in an object store: each fetch waits
# on the network for most of its time (pyarrow releases the GIL), so a few in flight hide the
# latency behind decoding. On a local disk the page cache serves reads at once: none ahead.
READ_AHEAD = 4


def _read_ahead(units: Sequence[_Unit], encoding: str | None) -> Iterator[tuple[Any, str]]:
    """Each unit's row group (the pair columns) with its patch encoding, in order; for units in an
    object store, fetched ``READ_AHEAD`` ahead by threads that each keep their own open shards."""
    local, footers = threading.local(), {}

    def fetch(unit: _Unit) -> tuple[Any, str]:
        if not hasattr(local, "files"):
            local.files = _OpenShards(footers=footers)
        shard = local.files.get(unit.file)
        return shard.read_row_group(unit.group, columns=_PAIR_COLUMNS), encoding or shard_encoding(shard)

    if not any(is_uri(u.file) for u in units[:1]):
        yield from map(fetch, units)
        return
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="srcore-read-ahead") as pool:
        pending: deque[Future] = deque()
        todo = iter(units)
        for unit in islice(todo, READ_AHEAD):
            pending.append(pool.submit(fetch, unit))
        try:
            while pending:
                got = pending.popleft().result()
                for unit in islice(todo, 1):
                    pending.append(pool.submit(fetch, unit))
                yield got
        finally:
            for future in pending:  # stopped early (quota reached): no fetch left running for nothing
                future.cancel()


class _OpenShards:
    """The shards a worker reads, kept open for the next of their row groups; at most ``limit`` at
    a time, the least recently used closed first. Footers parsed once are kept in ``footers``, which
    threads reading the same shards share (a file is opened per thread, its footer read once)."""

    def __init__(self, limit: int = 32, footers: dict[str, Any] | None = None) -> None:
        self.limit = limit
        self.open: dict[str, pq.ParquetFile] = {}
        self.footers = footers if footers is not None else {}

    def get(self, file: str) -> pq.ParquetFile:
        shard = self.open.pop(file, None)
        if shard is None:
            # pre_buffer: a row group's column chunks in one coalesced read, not one request per column
            shard = pq.ParquetFile(open_input_file(file), metadata=self.footers.get(file),
                                   pre_buffer=is_uri(file))
            self.footers.setdefault(file, shard.metadata)
        self.open[file] = shard  # most recent last
        if len(self.open) > self.limit:
            oldest = next(iter(self.open))
            self.open.pop(oldest).close()
        return shard


class ShardPairs(IterableDataset):
    """(lr, hr) float tensors in [0, 1] from shards, sharded across ranks and workers.

    ``shards`` is a :class:`ShardSet` (units from its manifest) or a list of shard files (units from
    their footers). Local or in an object store alike, a worker reads only its own row groups: a
    shard's footer once, then the column chunks of each of its row groups (range reads).
    """

    def __init__(self, shards: ShardSet | Sequence[str | os.PathLike], scale: int, patch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_buffer: int = 256,
                 augment: bool = True) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if isinstance(shards, ShardSet):
            self.units, self.encoding = shards.units(), shards.encoding
        else:
            self.units, self.encoding = _units(shards), None
        self.scale, self.patch, self.rank, self.world = scale, patch_size, rank, world_size
        self.seed, self.buffer, self.augment = seed, shuffle_buffer, augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call on every rank before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return samples_per_rank(self.units, self.epoch, self.seed, self.world)

    def _rows(self, units: list[_Unit]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for table, encoding in _read_ahead(units, self.encoding):
            for row in table.to_pylist():
                yield (decode_patch(row["hr"], row["hr_h"], row["hr_w"], encoding),
                       decode_patch(row["lr"], row["lr_h"], row["lr_w"], encoding))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        mine = _deal(self.units, self.epoch, self.seed, self.rank, self.world)
        quota = samples_per_rank(self.units, self.epoch, self.seed, self.world)
        # Workers split this rank's units; their quotas add up to the rank's quota exactly.
        units = mine[wid::nworkers]
        quotas = [sum(u.rows for u in mine[w::nworkers]) for w in range(nworkers)]
        excess = sum(quotas) - quota
        for w in reversed(range(nworkers)):
            cut = min(excess, quotas[w])
            quotas[w] -= cut
            excess -= cut
        quota = quotas[wid]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        buffer: list[tuple[np.ndarray, np.ndarray]] = []
        emitted = 0

        def emit(pair):
            lr, hr = training_sample(pair[0], pair[1], self.patch, self.scale, rng, self.augment)
            return torch.from_numpy(lr), torch.from_numpy(hr)

        for pair in self._rows(units):
            if emitted >= quota:
                return
            if len(buffer) < self.buffer:
                buffer.append(pair)
                continue
            i = int(rng.integers(len(buffer)))
            out, buffer[i] = buffer[i], pair
            emitted += 1
            yield emit(out)
        rng.shuffle(buffer)  # type: ignore[arg-type]
        for pair in buffer:
            if emitted >= quota:
                return
            emitted += 1
            yield emit(pair)


@dataclass(frozen=True)
class UnitPlan:
    """What a Ray Data task needs to turn a row index of ``ray.data.range`` into one unit of one
    epoch: the units, their patch encoding, the crop and the seed of each epoch's unit order."""

    units: tuple[_Unit, ...]
    encoding: str
    scale: int
    patch: int
    augment: bool
    seed: int

    def unit(self, index: int) -> _Unit:
        epoch, k = divmod(index, len(self.units))
        return self.units[_epoch_order(len(self.units), self.seed, epoch)[k]]


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded order of ``n`` units in ``epoch`` (kept for the epochs a process is reading)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def read_unit_crops(batch: dict[str, np.ndarray], plan: UnitPlan) -> dict[str, np.ndarray]:
    """Ray Data batch transform: row indices (``id``) -> the rows of their units, read by range from
    the shards, as random aligned crops, flipped/rotated, float CHW in [0, 1] (the same crop and
    augmentation as ``ShardPairs``).

    Ray Data runs batches as tasks in no fixed order, so each batch draws fresh entropy for its
    crops rather than a seeded stream; the order of units in each epoch is seeded.
    """
    rng = np.random.default_rng()
    lrs, hrs = [], []
    for table, encoding in _read_ahead([plan.unit(int(i)) for i in batch["id"]], plan.encoding):
        for row in table.to_pylist():
            hr = decode_patch(row["hr"], row["hr_h"], row["hr_w"], encoding)
            lr = decode_patch(row["lr"], row["lr_h"], row["lr_w"], encoding)
            lr, hr = training_sample(hr, lr, plan.patch, plan.scale, rng, plan.augment)
            lrs.append(lr)
            hrs.append(hr)
    return {"lr": np.stack(lrs), "hr": np.stack(hrs)}


def ray_dataset(shards: ShardSet | Sequence[str | os.PathLike], scale: int, patch_size: int,
                augment: bool = True, batch_size: int = 16, epochs: int = 1, seed: int = 0):
    """A ``ray.data.Dataset`` of ``{"lr", "hr"}`` training crops read from the shards (local or in
    an object store), ``epochs`` passes over them in one dataset: a run streams through one Ray Data
    execution instead of starting one per epoch.

    The dataset is ``ray.data.range`` over (epoch, unit) and a transform that reads each unit's row
    group by range (``read_unit_crops``), not ``read_parquet``: no Parquet listing or footer-reading
    actors (Ray starts up to 32 of them per read), units known from the manifest, and the same
    storage layer as the torch back-end. Pass it to ``TorchTrainer(datasets={"train": ...})``; each
    rank then iterates ``ray.train.get_dataset_shard("train").iter_torch_batches(...)`` once.
    """
    import ray.data

    if isinstance(shards, ShardSet):
        units, encodings = shards.units(), {shards.encoding}
    else:
        units = _units(shards)
        encodings = {shard_encoding(f) for f in {u.file for u in units}}
    if len(encodings) != 1:
        raise DataError(f"shards mix patch encodings {sorted(encodings)}; "
                        "prepare them again with one encoding")
    if not units:
        raise DataError("no rows in the shards; prepare more data")
    plan = UnitPlan(tuple(units), encodings.pop(), scale, patch_size, augment, seed)
    rows_per_unit = max(1, sum(u.rows for u in units) // len(units))
    per_task = max(1, math.ceil(batch_size / rows_per_unit))  # about a training batch of rows a task
    return ray.data.range(len(units) * max(1, epochs)).map_batches(
        read_unit_crops, batch_size=per_task, batch_format="numpy", fn_kwargs={"plan": plan})
