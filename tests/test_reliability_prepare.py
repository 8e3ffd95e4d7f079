"""`srcore data prepare` under faults: a killed parent takes its workers with it, resume rebuilds
shards whose bytes changed, the manifest is the same bytes on every run, training refuses what an
unfinished run left, every bad file is reported at once, and stray temporaries are cleaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from srcore.config import PrepareParams
from srcore.data.journal import JOURNAL
from srcore.data.loaders import shard_files
from srcore.data.prepare import prepare
from srcore.data.shards import file_sha256, read_shard
from srcore.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, size=(60, 72), seed=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")


def _params(src: Path, out: Path, **kw) -> PrepareParams:
    base = dict(input=str(src), out=str(out), scales=(2,), crop_size=48, step=24, images_per_shard=1,
                rows_per_group=4, workers=1)
    return PrepareParams(**{**base, **kw})


# A driver that slows every shard down (inside the pool workers) so the parent can be killed mid-run.
_DRIVER = """
import sys, time
sys.path.insert(0, {helper!r})
import slow_build
import srcore.data.executors as executors
import srcore.data.prepare as prep
from srcore.config import PrepareParams
executors.build_shard = slow_build.slow_build
prep.prepare(PrepareParams(input={src!r}, out={out!r}, scales=(2,), crop_size=48, step=24,
                           images_per_shard=1, rows_per_group=4, workers=2))
"""
_SLOW = """
import time
import srcore.data.shard_job as job
_real = job.build_shard

def slow_build(job):
    time.sleep(1.0)
    return _real(job)
"""


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # spawned workers import torch and numba: about 20-60 s on two busy cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_the_parent_ends_every_worker_and_all_writing(tmp_path, sig):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 10)
    (tmp_path / "slow_build.py").write_text(_SLOW)
    driver = _DRIVER.format(helper=str(tmp_path), src=str(src), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(driver)], env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not list((out / JOURNAL).glob("*.jsonl")):  # at least one shard finished: workers are busy
            assert parent.poll() is None, "prepare ended before it could be interrupted"
            assert time.time() < deadline, "prepare did not record a shard in time"
            time.sleep(0.1)
        workers = psutil.Process(parent.pid).children(recursive=True)
        assert workers
        parent.send_signal(sig)
        parent.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived the parent: {[p.pid for p in alive]}"
        before = _listing(out)
        time.sleep(1.5)  # more than one slowed shard: a surviving writer would show here
        assert _listing(out) == before
    finally:
        if parent.poll() is None:
            parent.kill()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["scales"]["2"]["shards"]) < 10
    with pytest.raises(DataError, match="did not finish.*srcore data prepare"):
        shard_files(out, 2)
    resumed = prepare(_params(src, out))
    # the shards the journal recorded are kept; only the others are built again
    assert resumed.reused_shards >= 1 and resumed.built_shards + resumed.reused_shards == 10
    assert len(shard_files(out, 2)) == 10 and not list(out.rglob("*.tmp"))


def test_resume_rebuilds_a_same_size_corrupted_shard(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 3)
    prepare(_params(src, out))
    victim = out / "x2" / "shard-00001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = prepare(_params(src, out))
    assert again.built_shards == 1 and again.reused_shards == 2
    entry = next(e for e in json.loads((out / "manifest.json").read_text())["scales"]["2"]["shards"]
                 if e["file"] == "x2/shard-00001.parquet")
    assert file_sha256(victim) == entry["sha256"]
    assert sum(1 for f in shard_files(out, 2) for _ in read_shard(f)) == again.rows[2]


def test_manifest_is_identical_between_identical_runs_with_a_bad_file(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 2)
    (src / "junk.png").write_bytes(b"this is not an image")
    prepare(_params(src, out))
    first = (out / "manifest.json").read_bytes()
    (out / "manifest.json").unlink()
    for shard in out.rglob("*.parquet"):
        shard.unlink()
    prepare(_params(src, out))
    assert (out / "manifest.json").read_bytes() == first
    assert b" at 0x" not in first and b"junk.png" in first


def test_loader_reads_only_the_shards_the_manifest_lists(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 2)
    prepare(_params(src, out))
    listed = shard_files(out, 2)
    (out / "x2" / "shard-09999.parquet").write_bytes(listed[0].read_bytes())  # not in the manifest
    assert shard_files(out, 2) == listed
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json not found"):
        shard_files(out, 2)


def test_on_bad_fail_reports_every_bad_file_and_resume_cleans_temporaries(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 4)
    (src / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(src / "z_tiny.png")
    out.mkdir()
    (out / "x2").mkdir()
    strays = [out / "x2" / ".shard-00000.parquet.abc123.tmp", out / ".manifest.json.def456.tmp"]
    for stray in strays:
        stray.write_bytes(b"half written")
    with pytest.raises(DataError) as info:
        prepare(_params(src, out, on_bad="fail"))
    message = str(info.value)
    assert "a_broken.png" in message and "z_tiny.png" in message and "\n" not in message
    assert not any(stray.exists() for stray in strays)
    with pytest.raises(DataError, match="did not finish"):
        shard_files(out, 2)


def test_interrupted_run_leaves_an_unfinished_manifest_and_resumes_from_its_journal(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 6)
    prepare(_params(src, out))
    for i in range(6):  # every image changes: every shard is stale
        Image.fromarray(np.full((60, 72, 3), i, dtype=np.uint8)).save(src / f"img{i:02d}.png")
    finished = []

    def stop_after_two(images: int) -> None:
        finished.append(images)
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(_params(src, out), on_progress=stop_after_two)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["scales"]["2"]["shards"] == []  # written once, up front
    with pytest.raises(DataError, match="did not finish"):
        shard_files(out, 2)
    assert list((out / JOURNAL).glob("*.jsonl"))
    resumed = prepare(_params(src, out))
    assert (resumed.reused_shards, resumed.built_shards) == (2, 4)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert len(list((out / JOURNAL).glob("*.jsonl"))) == 1  # folded into one segment of input hashes


def test_rerun_reads_only_the_inputs_whose_size_or_mtime_changed(tmp_path, monkeypatch):
    from srcore.storage import Folder

    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 4)
    prepare(_params(src, out))
    reads = []
    real = Folder.read_bytes
    monkeypatch.setattr(Folder, "read_bytes", lambda self, name: reads.append(name) or real(self, name))
    monkeypatch.setattr(Folder, "sha256", lambda self, name: pytest.fail(f"hashed {name} on the driver")
                        if name.endswith(".png") else file_sha256(self.root / name))
    assert prepare(_params(src, out)).reused_shards == 4
    assert not [r for r in reads if r.endswith(".png")]
    shard = out / "x2" / "shard-00001.parquet"
    written = shard.stat().st_mtime_ns
    os.utime(src / "img01.png", ns=(1, 1))  # same bytes, another mtime: read and hashed, shard kept
    Image.fromarray(np.zeros((60, 72, 3), dtype=np.uint8)).save(src / "img02.png")  # new bytes: rebuilt
    reads.clear()
    again = prepare(_params(src, out))
    assert sorted(r for r in reads if r.endswith(".png")) == ["img01.png", "img02.png"]
    assert (again.reused_shards, again.built_shards) == (3, 1) and shard.stat().st_mtime_ns == written


def test_a_shard_rebuilt_alone_is_cut_as_in_a_full_run(tmp_path):
    """63x75 is no multiple of lcm(2, 3): the x3 shard rebuilt on its own keeps the run's HR modcrop."""
    src, out = tmp_path / "raw", tmp_path / "out"
    _images(src, 1, size=(63, 75))
    prepare(_params(src, out, scales=(2, 3)))
    shard = out / "x3" / "shard-00000.parquet"
    full = shard.read_bytes()
    shard.unlink()
    again = prepare(_params(src, out, scales=(2, 3)))
    assert (again.built_shards, again.reused_shards) == (1, 1) and shard.read_bytes() == full
