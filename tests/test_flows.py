"""Prefect flows on the session's Prefect server, Ray cluster and prepared sample project
(conftest): the whole retrain chain (and its caching), and the distill/dvmsr deployment run by a
worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_retrain_chain_and_cache(sample_project, prefect_server, ray_local, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    root = sample_project
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from flows.retrain import retrain

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"],
                             PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        first = retrain(gate_metric="sample-val_psnr_y")
        assert Path(first["student_model"]).is_file() and first["promoted"] and first["version"] == "1"
        assert first["bicubic"]["sample-val_psnr_y"] > 20
        checkpoints = sorted(p.name for p in (root / "runs").rglob("checkpoint_*") if p.is_dir())
        second = retrain(gate_metric="sample-val_psnr_y")
    assert second["version"] == "1" and second["run_id"] == first["run_id"]  # registration was cached

    # one parent run per retrain holds the stage runs; the student's run names its teacher's run
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    student = client.get_run(first["run_id"])
    parent = student.data.tags["mlflow.parentRunId"]
    teacher = client.get_run(student.data.tags["teacher_run_id"])
    assert teacher.data.tags["mlflow.parentRunId"] == parent and teacher.data.tags["stage"] == "teacher"
    assert client.get_run(parent).data.tags["profile"] == "None"  # these tests ask for no profile
    assert len(client.get_metric_history(teacher.info.run_id, "train_loss_rec")) >= 1
    assert {"flops_g", "peak_mem_mb", "latency_ms"} <= set(student.data.metrics)
    # nothing retrained
    assert sorted(p.name for p in (root / "runs").rglob("checkpoint_*") if p.is_dir()) == checkpoints


def test_distill_dvmsr_deployment_on_a_real_server(sample_project, prefect_server, ray_local, tmp_path):
    root = sample_project
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **prefect_server, "SRCORE_HOME": str(root), "DVC_NO_ANALYTICS": "1",
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results")}
    env.pop("MLFLOW_TRACKING_URI", None)
    # a teacher for the student to learn from (the project's shards are prepared)
    from srcore.models import build, save_model
    from srcore.stack.services import pool_deployments

    save_model(root / "runs" / "teacher" / "model.pth", build("dvmsr_teacher", 4, embed_dim=8, depths=(1,)),
               "dvmsr_teacher")
    worker = None
    try:
        def prefect(*args: str, timeout: int = 300) -> str:
            res = subprocess.run([str(bin_dir / "prefect"), *args], cwd=root, env=env, capture_output=True,
                                 text=True, timeout=timeout)
            assert res.returncode == 0, \
                f"prefect {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            return res.stdout

        prefect("work-pool", "create", "srcore-process", "--type", "process")
        # every deployment of the process pool (one for a Kubernetes pool needs that pool's worker type)
        names = pool_deployments(root / "prefect.yaml", "srcore-process")
        prefect("--no-prompt", "deploy", *(arg for name in names for arg in ("--name", name)))
        assert "distill/dvmsr" in prefect("deployment", "ls")
        # a parameter the flow does not take is refused before anything runs
        bad = subprocess.run([str(bin_dir / "prefect"), "deployment", "run", "distill/dvmsr",
                              "--param", "bogus=1"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=120)
        said = bad.stdout + bad.stderr
        assert bad.returncode != 0 and "bogus" in said, said[-2000:]
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen([str(bin_dir / "prefect"), "worker", "start", "--pool",
                                       "srcore-process"],
                                      cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        # the flow run trains on the session's Ray cluster, not on a Ray of its own
        run = subprocess.run([str(bin_dir / "prefect"), "deployment", "run", "distill/dvmsr", "--param",
                              "overrides=" + json.dumps({}), "--param", f"address={ray_local.address}",
                              "--watch", "--watch-timeout", "600"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=700)
        # the flow run's own traceback is in the worker's output
        assert run.returncode == 0 and "Completed" in run.stdout, \
            run.stdout[-1500:] + "\n--- worker ---\n" + worker_log.read_text(errors="replace")[-4000:]
        assert (root / "runs" / "student-dvmsr" / "model.pth").is_file()
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
