"""Ray Train on tiny configs: learning, injected failure, resume, checkpoint retention,
distillation, bad configs, and a two-node local cluster."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srcore.config import load_params
from srcore.errors import CheckpointError, ConfigError, DataError
from srcore.models import load_model
from srcore.train.faults import injected
from srcore.train.loop import milestone_steps
from srcore.train.state import load_with_fallback, read_state, write_state

pytestmark = pytest.mark.slow

TINY = {
    "prepare.scales": [2], "prepare.crop_size": 48, "prepare.step": 24, "prepare.workers": 1,
    "loader.patch_size": 12, "loader.batch_size": 4, "loader.shuffle_buffer": 8,
    "teacher.model": "dvmsr", "teacher.model_overrides": {"embed_dim": 8, "depths": [1]}, "teacher.scale": 2,
    "teacher.lr": 2.0e-3, "teacher.ema_decay": 0.9, "teacher.val_dataset": "embedded",
    "student.model": "dvmsr", "student.model_overrides": {"embed_dim": 4, "depths": [1]}, "student.scale": 2,
    "student.lr": 2.0e-3, "student.ema_decay": 0.9, "student.val_dataset": "embedded",
}


def _smooth_images(folder: Path, n: int = 4, size: int = 96) -> None:
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        base = 128 + 80 * np.sin(xx / (5 + i)) * np.cos(yy / (7 + i))
        img = np.stack([base, np.roll(base, 9, 0), np.roll(base, 17, 1)], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")


def prepared(root: Path) -> Path:
    """``root`` with smooth images in raw/ and their TINY patches in patches/, and two small HR
    images in val/ to validate on (a fraction of the embedded set's pixels: a run validates at
    every ``val_every``)."""
    _smooth_images(root / "raw")
    _smooth_images(root / "val", n=2, size=48)
    from srcore.data.prepare import prepare

    prepare(load_params(None, {**TINY, "prepare.input": str(root / "raw"),
                               "prepare.out": str(root / "patches")}).prepare)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("train"))


def params(workdir: Path, **extra):
    val = str(workdir / "val")
    return load_params(None, {**TINY, "prepare.out": str(workdir / "patches"),
                              "teacher.val_dataset": val, "student.val_dataset": val,
                              "teacher.ray.storage_path": str(workdir / "runs"),
                              "student.ray.storage_path": str(workdir / "runs"), **extra})


def _last_state(run_dir: Path) -> dict:
    newest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    return read_state(newest)


@pytest.fixture(scope="module")
def teacher_run(workdir, ray_cluster):
    from srcore.train.runner import run_stage

    ray_cluster.connect()

    p = params(workdir, **{"teacher.steps": 30, "teacher.val_every": 10,
                           "teacher.ray.max_failures": 1, "teacher.ray.num_to_keep": 2})
    with injected(fail_once_at_step=15):
        return run_stage(p, "teacher")


def test_teacher_learns_survives_failure_and_prunes_checkpoints(teacher_run, workdir):
    run_dir = Path(teacher_run.run_dir)
    assert teacher_run.metrics["step"] == 30
    assert (run_dir / ".failed_once").exists()  # the injected failure happened and was survived
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 2  # num_to_keep
    state = _last_state(run_dir)
    assert state["resumed_from"] == 10  # restarted from the step-10 checkpoint after failing at 15
    losses = [h["loss"] for h in state["history"]]
    assert [h["step"] for h in state["history"]] == [10, 20, 30]
    assert losses[-1] < losses[0]
    model = load_model(teacher_run.model_path)
    assert model.scale == 2 and model.config.embed_dim == 8
    with torch.no_grad():
        assert model(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)


def test_distillation_resumes_after_forced_stop_and_exports_student_only(teacher_run, workdir, ray_local):
    from srcore.train.runner import run_stage

    base = {"student.name": "resume", "student.teacher": teacher_run.model_path, "student.steps": 20,
            "student.val_every": 5, "student.milestones": [0.5, 0.75], "student.w_out": 1.0,
            "student.w_feat": 1.0, "student.w_depth": 1.0}
    with injected(stop_at_step=10):
        first = run_stage(params(workdir, **base), "distill")
    assert first.metrics["step"] == 10
    second = run_stage(params(workdir, **base), "distill")
    assert second.metrics["step"] == 20
    state = _last_state(Path(second.run_dir))
    assert state["resumed_from"] == 10
    assert [h["step"] for h in state["history"]] == [5, 10, 15, 20]
    # epoch-exact resume: 36 patches / batch 4 = 9 batches an epoch, so step 10 is the first batch of
    # epoch 1; the resumed run finishes epoch 1 (steps 10-18) before epoch 2 starts, no jump
    assert [h["epoch"] for h in state["history"]] == [0, 1, 1, 2]
    assert (state["epoch"], state["position"]) == (2, 2)
    # the LR after each step matches an uninterrupted MultiStep schedule (milestones at 10 and 15)
    assert milestone_steps(20, (0.5, 0.75)) == [10, 15]
    assert [h["lr"] for h in state["history"]] == pytest.approx([2e-3, 1e-3, 5e-4, 5e-4])
    # the deployable unit is the student alone: no distillation adapters in the export
    student = load_model(second.model_path)
    assert student.config.embed_dim == 4
    assert not any("adapter" in k for k in torch.load(second.model_path, weights_only=True)["state_dict"])
    assert any("adapter" in k for k in state["trainable"])  # they were trained, though
    assert np.isfinite(second.metrics["val_psnr_y"])


def test_user_error_inside_a_worker_is_not_retried(workdir, ray_local):
    from srcore.train.runner import run_stage

    p = params(workdir, **{"teacher.name": "usererror", "teacher.steps": 6, "teacher.val_every": 3,
                           "teacher.ray.max_failures": 2})
    with injected(data_error_at_step=2), pytest.raises(DataError, match="injected data error at step 2"):
        run_stage(p, "teacher")
    attempts = (workdir / "runs" / "usererror" / ".failed_once.attempts").read_text().splitlines()
    assert attempts == ["rank 0 step 2"]  # one attempt although two retries were allowed


def test_a_stage_on_the_torch_back_end_starts_no_ray_data_actor(workdir):
    """Ray Train's per-stage processes, less the one that serves Ray Data shards when there are none;
    Ray Train's other callbacks (its placement-group cleaner among them) stay."""
    from srcore.train.runner import _trainer
    from srcore.train.stop import StopOnSignal

    p = params(workdir)
    trainer = _trainer(p, "teacher", p.teacher, str(workdir / "runs"), str(workdir / "runs" / "x"), None,
                       StopOnSignal(None, 1.0, "x"))
    names = {type(cb).__name__ for cb in trainer._create_default_callbacks()}
    assert "DatasetsCallback" not in names
    assert {"PlacementGroupCleanerCallback", "BackendSetupCallback"} <= names, names


def test_ray_data_backend_matches_shards_and_trains_two_ranks(workdir, ray_local):
    import pyarrow.parquet as pq

    from srcore.data.imresize import imresize_np
    from srcore.data.loaders import ray_dataset, shard_files
    from srcore.train.runner import run_stage

    files = shard_files(workdir / "patches", 2)
    # every epoch of a run in one dataset (one streaming execution), each row once an epoch; from a
    # list of shard files here, from the run's shard set in the stage below
    rows = ray_dataset(files, 2, 12, batch_size=4, epochs=2).take_all()
    assert len(rows) == 2 * sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    for row in rows:
        lr, hr = row["lr"], row["hr"]
        assert lr.shape == (3, 12, 12) and hr.shape == (3, 24, 24) and lr.dtype == np.float32
        assert 0.0 <= lr.min() and hr.max() <= 1.0
        # crops stay aligned through flips/rotations: HR downscaled is the LR crop (away from the border)
        down = imresize_np(hr.transpose(1, 2, 0).astype(np.float64), scale=0.5)
        assert np.abs(down - lr.transpose(1, 2, 0))[2:-2, 2:-2].max() < 3 / 255
    result = run_stage(params(workdir, **{"loader.backend": "ray_data", "teacher.name": "raydata",
                                          # half a CPU per rank leaves one of the two for Ray Data's
                                          # read tasks
                                          "teacher.ray.num_workers": 2, "teacher.ray.cpus_per_worker": 0.5,
                                          # into a second epoch (4 batches a rank each), one Ray
                                          # Data execution
                                          "teacher.steps": 6,
                                          "teacher.val_every": 2}), "teacher")
    state = _last_state(Path(result.run_dir))
    assert result.metrics["step"] == 6 and len(state["nodes"]) == 2
    assert all(np.isfinite(h["loss"]) for h in state["history"])
    # units come from the manifest and are read by the transform: no Parquet listing, so none of the
    # footer-reading actors read_parquet starts (up to 32 an execution, a process start each); the
    # GCS's table of every actor the cluster ran (the public state API needs the dashboard)
    from ray._private.state import actors

    assert not [a for a in actors().values() if "FooterReader" in a["ActorClassName"]]


def test_corrupted_latest_checkpoint_falls_back(tmp_path, caplog):
    from ray.train import Checkpoint

    old, new = tmp_path / "checkpoint_2026-01-01_00-00-01", tmp_path / "checkpoint_2026-01-01_00-00-02"
    old.mkdir()
    new.mkdir()
    write_state(old, {}, {"step": 7})
    (new / "state.pt").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        state = load_with_fallback(Checkpoint(str(new)))
    assert state == {"step": 7}
    assert "unreadable" in caplog.text


def test_bad_configurations_fail_fast(workdir, tmp_path):
    from srcore.train.runner import run_stage

    with pytest.raises(ConfigError, match="unknown model"):
        run_stage(params(workdir, **{"teacher.model": "nope"}), "teacher")
    with pytest.raises(CheckpointError, match="not found"):
        run_stage(params(workdir, **{"student.teacher": str(tmp_path / "missing.pth")}), "distill")
    from srcore.models import build, save_model

    save_model(tmp_path / "x4.pth", build("dvmsr", 4, embed_dim=4, depths=(1,)), "dvmsr")
    with pytest.raises(CheckpointError, match="x4, not x2"):
        run_stage(params(workdir, **{"student.teacher": str(tmp_path / "x4.pth")}), "distill")
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
        run_stage(params(workdir), "teacher", address="127.0.0.1:9")
    with pytest.raises(DataError, match="no shards"):
        run_stage(params(workdir, **{"teacher.scale": 3}), "teacher")
    with pytest.raises(ConfigError, match="teacher.steps"):
        params(workdir, **{"teacher.steps": 0})


def _quiet(printed: str) -> None:
    """A quiet console: Ray's own lines are in the run's ray.log and MLflow's INFO lines are off."""
    assert "Traceback" not in printed and "PlacementGroupCleaner" not in printed, printed[-3000:]
    assert "INFO mlflow" not in printed and "system metrics" not in printed.lower(), printed[-3000:]


def _train_command(workdir: Path, tmp_path: Path, ray_cluster, sets: dict
                   ) -> tuple[list[str], dict[str, str]]:
    """`srcore train --address` onto the session's cluster with TINY and ``sets`` (runs under
    tmp_path/runs, tracked in tmp_path/mlflow.db), and the environment to run it in (MLflow's console
    level left to the CLI)."""
    sets = {**TINY, "prepare.out": str(workdir / "patches"), "teacher.val_dataset": str(workdir / "val"),
            "teacher.ray.storage_path": str(tmp_path / "runs"), **sets}
    (tmp_path / "none.yaml").write_text("{}\n")
    args = [sys.executable, "-m", "srcore.cli", "train", "--params", str(tmp_path / "none.yaml"),
            "--address", ray_cluster.address]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}".replace("'", '"')]
    # its runs tracked in the test's folder, not in a store beside the checkout the suite runs from
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    return args, env


def _checkpoints(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()}


def test_two_node_run_stopped_by_sigterm_resumes_and_rides_out_a_lost_node(workdir, tmp_path, ray_cluster):
    """`srcore train --address` from another process onto the session's two-node cluster, two ranks
    spread over the nodes (``ray.placement_strategy: SPREAD``).

    SIGTERM after the first (timed) checkpoint stops both ranks at one step with a checkpoint and one
    line. The same command again resumes there; once it has saved a checkpoint of its own, the worker
    node's raylet is killed: the node and the rank on it are gone. Ray Train starts both ranks again
    on the node left, from that checkpoint (the driver's helper actor lives on the head, so it
    outlives the node); the run finishes, and the console says so in one line, with none of Ray's
    own output."""
    steps = 150
    args, env = _train_command(workdir, tmp_path, ray_cluster, {
        "teacher.ray.num_workers": 2, "teacher.ray.cpus_per_worker": 1,
        "teacher.ray.placement_strategy": "SPREAD", "teacher.ray.max_failures": 1, "teacher.steps": steps,
        "teacher.val_every": 50, "teacher.checkpoint_every_s": 1, "teacher.name": "multinode"})
    run_dir = tmp_path / "runs" / "multinode"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not _checkpoints(run_dir) and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        printed = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    _quiet(printed)
    at_stop = _last_state(run_dir)
    stopped = at_stop["step"]
    assert proc.returncode == 128 + signal.SIGTERM and 0 < stopped < steps, printed[-3000:]
    errors = [line for line in printed.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"stopped by SIGTERM at step {stopped}" in " ".join(printed.split())
    assert len(at_stop["nodes"]) == 2 and at_stop["nodes"][0] != at_stop["nodes"][1]  # one rank a node

    before = _checkpoints(run_dir)
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    try:
        while not _checkpoints(run_dir) - before and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        ray_cluster.worker.kill_raylet()
        killed = True
        printed = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
        if killed:
            ray_cluster.replace_worker()
    took = time.monotonic() - started
    assert proc.returncode == 0, printed[-3000:]
    _quiet(printed)
    assert "(raylet)" not in printed, printed[-3000:]
    assert (run_dir / "ray.log").is_file()
    said = " ".join(printed.split())
    assert said.count("a worker or its node was lost") == 1, printed[-3000:]
    state = _last_state(run_dir)
    assert state["step"] == steps and f"goes on from its checkpoint of step {state['resumed_from']}" in said
    assert state["resumed_from"] > stopped  # the rerun's own checkpoint, after the SIGTERM one
    assert len(set(state["nodes"])) == 1  # both ranks on the node left
    losses = [h["loss"] for h in state["history"]]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert took < 300, took


def _stop_by_signal(p, sig: signal.Signals, after_step: int):
    """Run ``p``'s teacher stage in this process and send this process ``sig`` once rank 0 reports
    ``after_step``; returns the TrainingInterrupted raised and the step the signal was sent at."""
    from srcore.train.runner import run_stage
    from srcore.train.stop import TrainingInterrupted

    sent: list[int] = []

    def interrupt(event: dict) -> None:  # the driver's progress thread: the signal hits fit()
        if event.get("step", 0) >= after_step and not sent:
            sent.append(event["step"])
            os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted, match=f"stopped by {sig.name} at step") as stopped:
        run_stage(p, "teacher", on_progress=interrupt)
    assert signal.getsignal(sig) is before and stopped.value.signum == sig
    return stopped.value, sent[0]


def test_signals_stop_at_a_step_with_its_checkpoint_and_reruns_resume_there(workdir, ray_local):
    """SIGTERM, then SIGINT on the rerun: each stops the run after one step with that step's checkpoint
    (data position, learning rate), and the rerun continues from exactly there."""
    run_dir = workdir / "runs" / "stopped"
    p = params(workdir, **{"teacher.name": "stopped", "teacher.steps": 400, "teacher.val_every": 1000,
                           "teacher.log_every": 1, "teacher.milestones": [0.01]})
    resumed_from = None
    for sig in (signal.SIGTERM, signal.SIGINT):
        error, sent = _stop_by_signal(p, sig, after_step=(resumed_from or 0) + 6)
        saved = _last_state(run_dir)
        step = saved["step"]
        assert step >= sent and f"at step {step} of 400" in str(error)
        assert saved["resumed_from"] == resumed_from
        assert not (run_dir / "model.pth").exists() and not (run_dir / "result.json").exists()
        # the data position of that step: 36 patches in batches of 4 are 9 batches an epoch
        assert (saved["epoch"], saved["position"]) == ((step - 1) // 9, (step - 1) % 9 + 1)
        assert saved["scheduler"]["last_epoch"] == step  # and its learning rate (halved at step 4)
        assert saved["history"] == []  # a stop checkpoint: no validation run for it
        assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
        resumed_from = step  # the SIGINT run resumed from the SIGTERM run's step (checked above)
