"""Training without Ray: checkpoints that cannot run code, old checkpoints still read, parameters
refused before Ray starts, epoch-exact batch positions, storage helpers and the fault hook."""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srcore.config import load_params
from srcore.errors import CheckpointError, ConfigError
from srcore.storage import copy_file, file_exists, is_uri, read_bytes, write_bytes
from srcore.train import faults
from srcore.train.state import load_with_fallback, read_state, restore_rng, rng_state, write_state


class _Payload:
    """Unpickling this creates ``marker``: what a planted checkpoint would do with real code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 99, "trainable": _Payload(marker)}, path)


def test_planted_state_is_refused_and_older_checkpoint_used(tmp_path, caplog):
    from ray.train import Checkpoint

    # the payload is live: a full unpickle runs it
    live = tmp_path / "live-marker"
    _plant(tmp_path / "probe" / "state.pt", live)
    torch.load(tmp_path / "probe" / "state.pt", weights_only=False)
    assert live.exists()

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    old, new = run / "checkpoint_2026-01-01_00-00-01", run / "checkpoint_2026-01-01_00-00-02"
    write_state(old, {"trainable": {"w": torch.ones(2)}}, {"step": 7})
    _plant(new / "state.pt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        read_state(new)
    with caplog.at_level(logging.WARNING):
        state = load_with_fallback(Checkpoint(str(new)))
    assert not marker.exists()
    assert state["step"] == 7 and torch.equal(state["trainable"]["w"], torch.ones(2))
    assert "refused" in caplog.text and "resumed from older" in caplog.text


def test_single_file_checkpoint_from_before_the_split_still_loads(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [3, 5], 0.5)
    random.seed(3)
    np.random.seed(3)
    legacy_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = (random.random(), np.random.rand())
    torch.save({"trainable": model.state_dict(), "ema": None, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": 4, "epoch": 1, "rng": [legacy_rng],
                "config": {"stage": "teacher"}, "history": [], "nodes": ["n"], "resumed_from": None},
               tmp_path / "state.pt")
    state = read_state(tmp_path)
    assert state["step"] == 4 and isinstance(state["scheduler"]["milestones"], Counter)
    restore_rng(state["rng"][0])
    assert (random.random(), np.random.rand()) == expected


def test_rng_state_round_trips_through_the_checkpoint(tmp_path):
    rng = rng_state()
    write_state(tmp_path, {"torch_rng": [rng["torch"]]}, {"rng": [{k: rng[k] for k in ("python", "numpy")}]})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(read_state(tmp_path)["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    assert json.loads((tmp_path / "state.json").read_text())["rng"][0]["numpy"][0] == "MT19937"


@pytest.mark.parametrize(("key", "value", "field"), [
    ("teacher.gamma", -1, "teacher.gamma"), ("teacher.gamma", 1.5, "teacher.gamma"),
    ("student.gamma", 0, "student.gamma"), ("teacher.milestones", [0.8, 0.5], "teacher.milestones"),
    ("teacher.milestones", [0.5, 0.5], "teacher.milestones"),
    ("teacher.milestones", [0.5, 1.0], "teacher.milestones"),
])
def test_schedule_values_are_refused_by_name(key, value, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_params(None, {key: value})


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """A prepared folder with a manifest (x2, 48 px HR crops -> 24 px LR, 36 patches)."""
    from PIL import Image

    from srcore.data.prepare import prepare

    root = tmp_path_factory.mktemp("checks")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / "raw" / f"im{i}.png")
    prepare(load_params(None, {"prepare.scales": [2], "prepare.crop_size": 48, "prepare.step": 24,
                               "prepare.workers": 1, "prepare.input": str(root / "raw"),
                               "prepare.out": str(root / "patches")}).prepare)
    return root / "patches"


def _cli_train(patches: Path, tmp_path: Path, monkeypatch, *sets: str):
    from srcore.cli import app
    from srcore.train import runner

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner, "ensure_ray", no_ray)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # tracking would go to ./mlflow.db
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("{}\n")
    args = ["train", "--params", "none.yaml", "--set", f"prepare.out={patches}", "--set", "teacher.scale=2",
            "--set", "teacher.ray.cpus_per_worker=1", "--set", "loader.patch_size=12"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("setting", "field"), [
    ("teacher.gamma=-1", "teacher.gamma"),
    ("loader.patch_size=500", "loader.patch_size"),
    ("loader.batch_size=64", "loader.batch_size"),
    ("teacher.ray.cpus_per_worker=512", "teacher.ray.cpus_per_worker"),
    ("teacher.ray.num_workers=64", "teacher.ray.num_workers"),
    ("prepare.out=no-patches", "no shards in"),
    ("teacher.init=rlfn.pth", "rlfn.pth"),
])
def test_train_refuses_before_ray_starts_and_before_tracking(patches, tmp_path, monkeypatch, setting, field):
    from srcore.models import build, save_model

    save_model(tmp_path / "rlfn.pth", build("rlfn", 2), "rlfn")  # another architecture than the teacher's
    res = _cli_train(patches, tmp_path, monkeypatch, setting)
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert field in text and "Traceback" not in text and "Ray was started" not in text
    assert "MLflow:" not in text and not (tmp_path / "mlflow.db").exists()  # no run, not even a store


def test_ray_data_with_no_cpu_left_for_its_reads_is_refused(patches, tmp_path, monkeypatch):
    from srcore.train.preflight import _local_cpus

    res = _cli_train(patches, tmp_path, monkeypatch, "loader.backend=ray_data",
                     f"teacher.ray.cpus_per_worker={_local_cpus():g}")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "ray_data" in text and "at least one" in text, res.output
    assert "Ray was started" not in text


def test_patch_size_message_gives_the_limit(patches, tmp_path, monkeypatch):
    res = _cli_train(patches, tmp_path, monkeypatch, "loader.patch_size=500")
    assert "at most 24" in " ".join(res.output.split())


def test_epoch_batches_skip_what_a_checkpoint_already_trained():
    from types import SimpleNamespace

    from srcore.errors import DataError
    from srcore.train.loop import epoch_batches

    state = SimpleNamespace(epoch=1, position=3, rank=0, world=1, lcfg=SimpleNamespace(batch_size=4),
                            batches=lambda epoch: iter([(epoch, i) for i in range(5)]))
    got = []
    for batch in epoch_batches(state):
        got.append(batch)
        assert state.position == batch[1] + 1  # position counts batches trained in this epoch
    assert got == [(1, 3), (1, 4)]
    state.batches = lambda epoch: iter([])
    with pytest.raises(DataError, match="loader.batch_size"):
        list(epoch_batches(state))


def test_fault_plan_comes_only_from_the_test_hook(tmp_path):
    assert "fail_once_at_step" not in load_params(None).teacher.model_dump()
    with pytest.raises(ConfigError, match="fail_once_at_step"):
        load_params(None, {"teacher.fail_once_at_step": 3})
    assert faults.from_env() == faults.FaultPlan()
    with faults.injected(stop_at_step=4):
        plan = faults.from_env()
    assert plan.last_step(10) == 4 and faults.ENV not in os.environ
    marker = tmp_path / ".failed_once"
    fail = faults.FaultPlan(fail_once_at_step=2)
    fail.after_step(2, rank=1, marker=marker)  # only rank 0 fails
    with pytest.raises(RuntimeError, match="injected failure"):
        fail.after_step(2, rank=0, marker=marker)
    fail.after_step(2, rank=0, marker=marker)  # once
    os.environ[faults.ENV] = "not json"
    try:
        with pytest.raises(ConfigError, match=faults.ENV):
            faults.from_env()
    finally:
        del os.environ[faults.ENV]


def test_copy_file_between_local_paths_and_uris(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"weights")
    assert is_uri("s3://bucket/x") and is_uri(f"file://{src}")
    assert not is_uri(src) and not is_uri("models:/m@a")
    copy_file(src, tmp_path / "sub" / "b.bin")
    copy_file(f"file://{tmp_path / 'sub' / 'b.bin'}", tmp_path / "c.bin")
    copy_file(src, f"file://{tmp_path / 'd.bin'}")
    assert {p.read_bytes() for p in (tmp_path / "c.bin", tmp_path / "d.bin")} == {b"weights"}
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "sub").glob(".*.tmp"))
    # a run's recorded result, read and written the same way on a disk and in a store
    for where in (tmp_path / "run" / "result.json", f"file://{tmp_path / 'result.json'}"):
        assert not file_exists(where)
        with pytest.raises(FileNotFoundError):
            read_bytes(where)
        if not is_uri(where):
            where.parent.mkdir()
        write_bytes(where, b"{}")
        assert file_exists(where) and read_bytes(where) == b"{}"
    assert not file_exists("") and not file_exists(tmp_path)  # a folder is not a file


def test_training_task_retries_only_errors_that_are_not_the_users():
    from prefect.states import Failed

    from flows.stages import _retryable
    from srcore.errors import DataError

    assert not _retryable(None, None, Failed(data=ConfigError("teacher.gamma: bad")))
    assert not _retryable(None, None, Failed(data=DataError("no shards")))
    assert _retryable(None, None, Failed(data=RuntimeError("worker died")))


def test_interrupted_training_crashes_the_flow_run_instead_of_completing():
    """Prefect ends a task and its flow run as crashed on a TerminationSignal (a BaseException: no
    retry, no completion), which is what a training stage stopped by a signal becomes."""
    import signal

    from prefect.exceptions import TerminationSignal

    from flows.stages import interruption_crashes_the_run
    from srcore.train.stop import TrainingInterrupted

    with pytest.raises(TerminationSignal) as caught, interruption_crashes_the_run():
        raise TrainingInterrupted("teacher: stopped by SIGTERM at step 5 of 400", signal.SIGTERM)
    assert caught.value.signal == signal.SIGTERM and not isinstance(caught.value, Exception)
    with pytest.raises(ConfigError), interruption_crashes_the_run():  # other errors stay as they are
        raise ConfigError("teacher.gamma: bad")


def _append(path: Path, text: str) -> None:
    with path.open("a") as sink:
        sink.write(text)


def test_ray_log_of_a_run_in_an_object_store_is_appended_there(tmp_path, monkeypatch):
    """Object stores have no append: each stage's Ray lines are spooled locally and added to the run's
    ray.log in the store when the stage ends, also when it failed; a log that cannot be read is kept."""
    from srcore.train import runner

    run_dir = f"file://{tmp_path / 'run'}"
    (tmp_path / "run").mkdir()
    spool = tmp_path / "this-machine" / "ray.log"
    with runner._ray_log_in(run_dir, spool) as (local, where):
        assert not is_uri(local) and where == f"{run_dir}/ray.log"
        _append(local, "first stage\n")
    with pytest.raises(RuntimeError), runner._ray_log_in(run_dir, spool) as (local, _):
        _append(local, "second stage\n")
        raise RuntimeError("the stage failed")
    assert read_bytes(f"{run_dir}/ray.log") == b"first stage\nsecond stage\n"
    assert not local.exists()  # the spool is gone once its lines are in the store

    def unreadable_store_log(src, dest):
        if is_uri(src):
            raise PermissionError(13, "denied", str(src))
        copy_file(src, dest)

    monkeypatch.setattr(runner, "copy_file", unreadable_store_log)
    with runner._ray_log_in(run_dir, spool) as (local, where):
        _append(local, "third stage\n")
    assert where != f"{run_dir}/ray.log" and read_bytes(where) == b"third stage\n"
    assert (tmp_path / "run" / "ray.log").read_bytes() == b"first stage\nsecond stage\n"

    def store_down(src, dest):
        raise OSError(f"{dest}: object store unavailable")

    # a store that cannot be reached: the lines stay on this machine, and the next stage adds to them
    monkeypatch.setattr(runner, "copy_file", store_down)
    for stage in ("fourth", "fifth"):
        with runner._ray_log_in(run_dir, spool) as (local, where):
            _append(local, f"{stage} stage\n")
    assert spool.read_bytes() == b"fourth stage\nfifth stage\n"
    # a local run folder holds the file itself
    with runner._ray_log_in(str(tmp_path / "local"), spool) as (local, where):
        assert local == tmp_path / "local" / "ray.log" and where == str(local)


def test_the_stage_channel_keeps_order_bounds_its_backlog_and_the_first_stop_reason():
    """The one helper actor a stage starts (here as a plain object): events come out oldest first,
    a full channel refuses and counts instead of growing, and a second stop request keeps the first
    reason."""
    import subprocess
    import sys

    from srcore.train.channel import RunChannel

    ch = RunChannel(maxsize=3)
    assert [ch.put({"step": i}) for i in range(5)] == [True, True, True, False, False]
    assert ch.dropped == 2
    assert ch.take(2) == [{"step": 0}, {"step": 1}] and ch.take() == [{"step": 2}] and ch.take() == []
    assert ch.stop_requested() is None
    ch.request_stop("SIGTERM")
    ch.request_stop("SIGINT")
    assert ch.stop_requested() == "SIGTERM"
    # its process imports only this module: neither torch nor Ray Train
    loaded = subprocess.run([sys.executable, "-c", "import sys, srcore.train.channel; "
                             "print(sorted(m for m in ('torch', 'ray.train', 'numpy') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
