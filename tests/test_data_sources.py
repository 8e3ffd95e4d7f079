"""Training data from wherever it lives: a local folder, an ``s3://`` prefix (a moto server on
loopback) and the DVC remote's pinned copy give a rank the very same batches; shards are read in
row groups (no whole-file download); a missing shard or an unpushed version is refused by name; and
a Ray Data stream that delivers nothing is reported."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import S3_TEST_ENV, free_port
from PIL import Image

from srcore.config import LoaderParams, PrepareParams
from srcore.data.loaders import ShardPairs, _units, shard_set
from srcore.data.patch_source import patch_source
from srcore.data.prepare import prepare
from srcore.errors import DataError
from srcore.storage import copy_file

BUCKET = "train-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with one bucket; the environment points boto3, pyarrow and DVC at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    patch = pytest.MonkeyPatch()
    for key, value in {**S3_TEST_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        patch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    yield f"http://127.0.0.1:{port}"
    patch.undo()
    server.stop()


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """A prepared folder: x2, 5 noise images, 3 shards of about 1 MB, 4 rows a row group (over 30 groups
    a shard, each much smaller than the 64 KB Parquet readers fetch for a footer)."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    (root / "raw").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)).save(root / "raw" / f"im{i}.png")
    prepare(PrepareParams(input=str(root / "raw"), out=str(root / "patches"), scales=(2,), crop_size=48,
                          step=24, images_per_shard=2, rows_per_group=4, workers=1))
    return root / "patches"


def _upload(folder: Path, prefix: str) -> str:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            copy_file(p, f"s3://{BUCKET}/{prefix}/{p.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def _batches(source, rank: int, epochs=(0, 1)) -> list[bytes]:
    ds = ShardPairs(shard_set(source, 2), 2, patch_size=12, rank=rank, world_size=2, seed=3, shuffle_buffer=8)
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out += [torch.cat([lr.flatten(), hr.flatten()]).numpy().tobytes() for lr, hr in ds]
    return out


def test_units_come_from_the_manifest_as_the_footers_give_them(patches):
    shards = shard_set(patches, 2)
    assert len(shards.files) == 3 and shards.encoding == "raw"
    assert shards.units() == _units(shards.files)
    assert any(u.group > 0 for u in shards.units())  # several row groups a shard: the case that matters


def test_s3_prefix_gives_each_rank_the_local_folders_batches(patches, s3):
    uri = _upload(patches, "same")
    for rank in (0, 1):
        local = _batches(patches, rank)
        assert local and _batches(uri, rank) == local


class _Counting:
    """A file that counts the bytes read through it (pyarrow reads a Python file by seek and read)."""

    def __init__(self, f, counter: list[int]) -> None:
        self.f, self.counter = f, counter

    def read(self, n=-1):
        data = self.f.read(n)
        self.counter.append(len(data))
        return data

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)

    def tell(self):
        return self.f.tell()

    def readable(self):
        return True

    def seekable(self):
        return True

    @property
    def closed(self):
        return self.f.closed

    def close(self):
        self.f.close()


def test_a_rank_reads_its_row_groups_not_whole_shards(patches, s3, monkeypatch):
    from srcore import storage

    uri = _upload(patches, "ranges")
    counter: list[int] = []
    monkeypatch.setattr("srcore.data.loaders.open_input_file",
                        lambda p: _Counting(storage.open_input_file(p), counter))
    shards = shard_set(uri, 2)
    total = sum(storage.open_store(uri).size(f"x2/shard-0000{i}.parquet") for i in range(3))
    ds = ShardPairs(shards, 2, patch_size=12, rank=0, world_size=2, seed=3)
    assert len(list(ds)) == len(ds) > 0
    # rank 0 of 2 gets about half the row groups: it fetched well under every shard's bytes
    assert 0 < sum(counter) < 0.7 * total, (sum(counter), total)


def test_missing_shard_in_the_store_is_named(patches, s3):
    uri = _upload(patches, "missing")
    from srcore.storage import open_store

    open_store(uri).delete("x2/shard-00001.parquet")
    with pytest.raises(DataError, match=r"shard-00001\.parquet: listed in .* but missing"):
        shard_set(uri, 2)


def _dvc(repo: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dvc_source_reads_the_pinned_version_from_the_remote_with_no_local_copy(patches, s3, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
    _dvc(repo, "remote", "modify", "store", "endpointurl", s3)
    shutil.copytree(patches, repo / "data" / "patches")
    with pytest.raises(DataError, match="dvc.lock"):  # nothing pinned yet
        patch_source("data/patches", "dvc", repo)
    _dvc(repo, "stage", "add", "-q", "-n", "prepare", "-o", "data/patches", "true")
    _dvc(repo, "commit", "-q", "-f", "prepare")
    with pytest.raises(DataError, match="dvc push"):  # pinned, not pushed
        patch_source("data/patches", "dvc", repo)
    _dvc(repo, "push", "-q")
    shutil.rmtree(repo / "data" / "patches")
    shutil.rmtree(repo / ".dvc" / "cache")
    source = patch_source("data/patches", "dvc", repo)
    assert source.pin and source.uri.startswith(f"s3://{BUCKET}/dvc/") and source.uri.endswith(".dir")
    assert all(loc.startswith(f"s3://{BUCKET}/dvc/files/md5/") for loc in source.files.values())
    for rank in (0, 1):
        assert _batches(source.as_config(), rank) == _batches(patches, rank)


def test_loader_source_setting_is_validated():
    assert LoaderParams().source == "prepared"
    with pytest.raises(ValueError, match="source"):
        LoaderParams(source="nfs")


class _StalledShard:
    """A Ray Data shard whose stream never delivers (its read tasks wait for resources)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def iter_torch_batches(self, **_):
        self.release.wait(10)
        yield from ()


def test_ray_data_stream_reports_a_stall_and_ends_an_empty_epoch():
    from srcore.train.loop import RayDataStream

    stalls: list[float] = []
    shard = _StalledShard()
    stream = RayDataStream(shard, LoaderParams(), per_epoch=3, on_stall=stalls.append, stall_s=0.4)
    threading.Timer(1.5, shard.release.set).start()
    t0 = time.monotonic()
    assert list(stream.epoch(0)) == []
    assert time.monotonic() - t0 >= 1.4 and stalls and all(s >= 0.4 for s in stalls)
