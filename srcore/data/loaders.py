"""Streaming training batches from Parquet shards, for torch DataLoader/DDP and for Ray Data.

Work is split in units of one Parquet row group. Each epoch the units are shuffled with a
seed shared by all ranks and dealt round-robin to ranks, then to DataLoader workers, so no
sample is read twice per epoch. Every rank stops after the same number of samples
(``samples_per_rank``, computed from the shard metadata alone), so DDP ranks never wait on
each other at the end of an epoch. A shuffle buffer mixes samples across row groups, and each
sample gets a random aligned crop (LR ``patch_size``, HR ``patch_size * scale``), flips and a
90-degree rotation.

``ray_dataset`` is the same data for Ray Train's own ingest: ``ray.data.read_parquet`` with the
same crop and augmentation as a batch transform; ``ray.train.get_dataset_shard`` then splits it
into equal streams per rank.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from srcore.data.patch_source import PatchSource, as_source
from srcore.data.shards import MANIFEST, decode_patch, shard_encoding
from srcore.errors import DataError
from srcore.storage import filesystem, is_uri, join, open_input_file

__all__ = ["shard_files", "ShardPairs", "augment_pair", "random_crop_pair", "samples_per_rank", "ray_dataset",
           "crop_augment_batch", "training_sample"]


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
    order = list(range(len(units)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
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


class _OpenShards:
    """The shards a worker reads, kept open (footer parsed once) for the next of their row groups;
    at most ``limit`` at a time, the least recently used closed first."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self.open: dict[str, pq.ParquetFile] = {}

    def get(self, file: str) -> pq.ParquetFile:
        shard = self.open.pop(file, None) or pq.ParquetFile(open_input_file(file))
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
        files = _OpenShards()
        for u in units:
            shard = files.get(u.file)
            encoding = self.encoding or shard_encoding(shard)
            table = shard.read_row_group(u.group, columns=_PAIR_COLUMNS)
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


def crop_augment_batch(batch: dict[str, np.ndarray], scale: int, patch_size: int, encoding: str,
                       augment: bool = True) -> dict[str, np.ndarray]:
    """Ray Data batch transform: stored pairs -> random aligned crops, flipped/rotated, as float
    CHW arrays in [0, 1] (the same crop and augmentation as ``ShardPairs``).

    Ray Data runs batches as tasks in no fixed order, so each batch draws fresh entropy rather
    than a seeded stream.
    """
    rng = np.random.default_rng()
    lrs, hrs = [], []
    for i in range(len(batch["hr"])):
        hr = decode_patch(batch["hr"][i], int(batch["hr_h"][i]), int(batch["hr_w"][i]), encoding)
        lr = decode_patch(batch["lr"][i], int(batch["lr_h"][i]), int(batch["lr_w"][i]), encoding)
        lr, hr = training_sample(hr, lr, patch_size, scale, rng, augment)
        lrs.append(lr)
        hrs.append(hr)
    return {"lr": np.stack(lrs), "hr": np.stack(hrs)}


# Ray Data lists Parquet files through a pool of footer-reading actors that it starts for every
# execution (each epoch), 32 of them unless RAY_DATA_PARQUET_FOOTER_NUM_ACTORS says otherwise,
# and reads that variable only when ``read_parquet`` builds the plan. Each actor is a process
# start; a few shards need one actor per batch of FOOTERS_PER_READER files, not 32. Ray offers no
# argument for it, hence the variable, set for the duration of the call and restored after.
FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FOOTERS_PER_READER = 10  # Ray's files per footer-reading call
MAX_FOOTER_READERS = 32  # Ray's default pool


@contextmanager
def _footer_readers(n_files: int) -> Iterator[None]:
    """As many footer readers as ``n_files`` can keep busy, unless the user chose a number."""
    if FOOTER_READERS_ENV in os.environ:
        yield
        return
    readers = min(MAX_FOOTER_READERS, max(1, math.ceil(n_files / FOOTERS_PER_READER)))
    os.environ[FOOTER_READERS_ENV] = str(readers)
    try:
        yield
    finally:
        os.environ.pop(FOOTER_READERS_ENV, None)


def ray_dataset(shards: ShardSet | Sequence[str | os.PathLike], scale: int, patch_size: int,
                augment: bool = True, batch_size: int = 16, epochs: int = 1):
    """A ``ray.data.Dataset`` of ``{"lr", "hr"}`` training crops read from the shards (local or in
    an object store), ``epochs`` passes over them in one dataset: a run streams through one Ray Data
    execution instead of starting one (and its actors) per epoch.

    Pass it to ``TorchTrainer(datasets={"train": ...})``; each rank then iterates
    ``ray.train.get_dataset_shard("train").iter_torch_batches(...)`` once (``RayDataStream``).
    """
    import ray.data

    if isinstance(shards, ShardSet):
        files, encodings = list(shards.files), {shards.encoding}
    else:
        files = [f if is_uri(f) else str(Path(f).resolve()) for f in map(str, shards)]
        encodings = {shard_encoding(f) for f in files}
    if len(encodings) != 1:
        raise DataError(f"shards mix patch encodings {sorted(encodings)}; "
                        "prepare them again with one encoding")
    fs, _ = filesystem(files[0])
    paths = [filesystem(f)[1] for f in files]
    with _footer_readers(len(files)):
        one = ray.data.read_parquet(paths, filesystem=fs).select_columns(_PAIR_COLUMNS)
    ds = one.union(*[one] * (epochs - 1)) if epochs > 1 else one  # read_parquet drops repeated paths
    return ds.map_batches(crop_augment_batch, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs={"scale": scale, "patch_size": patch_size, "encoding": encodings.pop(),
                                     "augment": augment})
