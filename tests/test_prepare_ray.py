"""`srcore data prepare` on Ray: one task per shard on the session's two-node cluster (127.0.0.2 and
127.0.0.3, ``ray_cluster`` in conftest) writes the same bytes as the local process pool, survives
a worker node whose raylet is killed mid-run (the rerun gives the same bytes), and reads from and
writes to S3 (a moto server on loopback) with the same shards, also from a local folder and an S3
prefix together."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import S3_TEST_ENV, free_port
from PIL import Image

from srcore.config import PrepareParams
from srcore.data import prepare as prep
from srcore.data.executors import LocalPool, PrepareFailed, RayTasks
from srcore.data.journal import JOURNAL
from srcore.data.prepare import prepare
from srcore.errors import ConfigError, DataError
from srcore.storage import StoreUnavailable, open_store

REPO = Path(__file__).resolve().parents[1]
# the cluster tests: the session's two-node cluster takes 20-70 s to start on two busy cores
cluster_test = pytest.mark.slow

RAW = "s3://hr-images/raw"


def _images(folder: Path, n: int = 6, size: tuple[int, int] = (72, 96)) -> None:
    """``n`` noise images plus one too small to cut (a deterministic bad-file reason)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")


def _params(src: str | list[str], out: str, **kw) -> PrepareParams:
    base = dict(input=src, out=out, scales=(2, 4), crop_size=48, step=24, images_per_shard=1,
                rows_per_group=4, workers=1)
    return PrepareParams(**{**base, **kw})


def _reference(src: Path, out: Path) -> Path:
    """The local pool's output for ``src``, written to ``out`` (the manifest records that path)
    and then moved aside, so that another run can write to the same path and be compared."""
    prepare(_params(str(src), str(out)), executor=LocalPool(1))
    return out.rename(out.with_name(out.name + "-local"))


def _tree(folder: Path) -> dict[str, str]:
    """The prepared files and their sha256 (the journal is run state, not output)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and JOURNAL not in p.parts}


def test_dvc_stage_tracks_every_parameter_that_shapes_the_bytes():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["prepare"]
    listed = {p.removeprefix("prepare.") for p in stage["params"]}
    assert listed == set(PrepareParams.model_fields) - prep._RUN_ONLY
    assert prep._RUN_ONLY < set(PrepareParams.model_fields)


def test_locations_other_than_folders_and_s3_are_refused():
    with pytest.raises(ConfigError, match="only local folders and s3://"):
        open_store("gs://bucket/raw")
    with pytest.raises(ConfigError, match="needs a bucket"):
        open_store("s3://")
    bucket = open_store("s3://bucket/some/prefix/")
    assert bucket.path("x2/shard-00000.parquet") == "s3://bucket/some/prefix/x2/shard-00000.parquet"
    assert str(open_store("data/raw", base="/elsewhere")) == "data/raw"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Raw images and the local pool's output for them (the reference bytes)."""
    root = tmp_path_factory.mktemp("prepare-ray")
    _images(root / "raw")
    _reference(root / "raw", root / "out")
    return root


@cluster_test
def test_ray_tasks_write_the_local_pools_bytes(ray_local, data, tmp_path):
    cluster = ray_local
    out = data / "out"
    totals, done = [], []
    summary = prepare(_params(str(data / "raw"), str(out), executor="ray", address=cluster.address),
                      on_progress=done.append,
                      on_total=lambda images, shards: totals.append((images, shards)))
    assert _tree(out) == _tree(data / "out-local")  # shards, their sha256 and the manifest, byte for byte
    shards = sum(k.endswith(".parquet") for k in _tree(out))
    assert totals == [(7, 7)] and done == [1] * 7 and summary.built_shards == shards == 14
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [b["file"] for b in manifest["bad"]] == ["tiny"]
    assert "executor" not in manifest["params"] and "workers" not in manifest["params"]
    again = prepare(_params(str(data / "raw"), str(out), executor="ray"), executor=RayTasks(cluster.address))
    assert again.built_shards == 0 and again.reused_shards == 14


@cluster_test
def test_user_errors_come_back_once_and_unwrapped(ray_local, data, tmp_path):
    cluster = ray_local
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "x2").write_text("a file where the scale folder goes\n")
    with pytest.raises(OSError, match="x2"):  # OutputError: a SrcoreError, raised on the driver as it was
        prepare(_params(str(data / "raw"), str(blocked)), executor=RayTasks(cluster.address, max_retries=0))
    with pytest.raises(DataError, match="smaller than one 48x48"):
        prepare(_params(str(data / "raw"), str(tmp_path / "strict"), on_bad="fail"),
                executor=RayTasks(cluster.address))


@cluster_test
def test_s3_input_and_output_give_the_same_shards(ray_local, data, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    cluster = ray_local
    for key, value in S3_TEST_ENV.items():  # the driver's credentials (the nodes have theirs)
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # forwarded to the tasks
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="hr-images")
        for p in sorted((data / "raw").iterdir()):
            s3.upload_file(str(p), "hr-images", f"raw/{p.name}")
        ref = _tree(data / "out-local")
        local = json.loads((data / "out-local" / "manifest.json").read_text())
        for executor in (RayTasks(cluster.address), LocalPool(1)):
            prefix = f"patches-{type(executor).__name__}"
            out = f"s3://hr-images/{prefix}"
            prepare(_params(RAW, out), executor=executor)
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hr-images", Prefix=prefix)["Contents"]]
            got = {k.split("/", 1)[1]: s3.get_object(Bucket="hr-images", Key=k)["Body"].read() for k in keys
                   if f"/{JOURNAL}/" not in k}
            assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items() if k.endswith(".parquet")} == \
                   {k: v for k, v in ref.items() if k.endswith(".parquet")}
            manifest = json.loads(got["manifest.json"])
            assert manifest["input"]["path"] == RAW
            assert manifest["params"] == {**local["params"], "input": RAW, "out": out}
            assert manifest["scales"] == local["scales"]
            # the one bad file's reason names it where it was read
            assert manifest["bad"] == [{**b, "reason": b["reason"].replace(str(data / "raw"), RAW)}
                                       for b in local["bad"]]
        with pytest.raises(DataError, match="s3://nobucket"):
            prepare(_params("s3://nobucket/raw", str(data / "never")), executor=LocalPool(1))
    finally:
        server.stop()
    with pytest.raises(StoreUnavailable):  # nothing listens any more: worth a retry, not a bad image
        open_store("s3://hr-images/raw").read_bytes("img00.png")


def test_a_local_folder_and_an_s3_prefix_as_inputs_give_the_one_folders_shards(data, tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in S3_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="hr-images")
        (tmp_path / "local").mkdir()
        for p in sorted((data / "raw").iterdir()):  # img00-img02 here, img03-img05 and tiny in S3
            if p.name < "img03":
                shutil.copy(p, tmp_path / "local")
            else:
                s3.upload_file(str(p), "hr-images", f"rest/{p.name}")
        params = _params([str(tmp_path / "local"), "s3://hr-images/rest"], str(tmp_path / "out"))
        prepare(params, executor=LocalPool(1))
        shards = {k: v for k, v in _tree(tmp_path / "out").items() if k.endswith(".parquet")}
        assert shards == {k: v for k, v in _tree(data / "out-local").items() if k.endswith(".parquet")}
        assert prepare(params, executor=LocalPool(1)).built_shards == 0  # sizes and times recorded
    finally:
        server.stop()


def _running_shard_tasks(node) -> bool:
    """Whether a process under ``node``'s raylet runs a shard task (Ray titles it after the task)."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for child in raylet.children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("ray::prepare-shard"):
                return True
        except psutil.Error:
            continue
    return False


@cluster_test
def test_killed_worker_node_mid_run_leaves_no_partial_shard_and_rerun_is_identical(ray_local, tmp_path):
    """The images are larger here, so that shards are still being written on the worker node when
    its raylet dies; a fresh worker node takes its place for the tests after this one."""
    cluster, worker = ray_local, ray_local.worker
    _images(tmp_path / "raw", n=8, size=(360, 480))
    out = tmp_path / "out"
    local = _reference(tmp_path / "raw", out)
    params = _params(str(tmp_path / "raw"), str(out), executor="ray", address=cluster.address)
    killed = []

    def kill_worker_node(images: int) -> None:
        """After the first shard: wait until the worker node runs a shard task, then kill its raylet."""
        if killed:
            return
        deadline = time.monotonic() + 30
        while not (busy := _running_shard_tasks(worker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed.append(busy)
        worker.kill_raylet()

    try:
        prepare(params, on_progress=kill_worker_node)
    except PrepareFailed:
        pass  # every retry was spent while the node was being declared dead: the rerun finishes
    finally:
        if killed:
            ray_local.replace_worker()
    assert killed == [True]  # a shard task was running on the node when its raylet died
    reference = _tree(local)
    visible = {k: v for k, v in _tree(out).items()
               if k.endswith(".parquet") and not Path(k).name.startswith(".")}
    assert all(reference[k] == v for k, v in visible.items())  # no visible shard is partial
    prepare(params)
    assert _tree(out) == reference
