"""Prefect flows: the whole retrain chain under a test harness (and its caching), and the
distill/dvmsr deployment run by a worker against a real Prefect server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, wait_for_health

pytestmark = pytest.mark.slow

TINY_FLOW = {
    "prepare.scales": [4], "prepare.crop_size": 96, "prepare.step": 96, "prepare.workers": 1,
    "loader.patch_size": 12, "loader.batch_size": 4, "loader.shuffle_buffer": 8,
    "teacher.model_overrides": {"embed_dim": 8, "depths": [1]}, "teacher.steps": 6, "teacher.val_every": 6,
    "student.model_overrides": {"embed_dim": 4, "depths": [1]}, "student.steps": 6, "student.val_every": 6,
    "teacher.ray.cpus_per_worker": 1, "student.ray.cpus_per_worker": 1, "teacher.log_every": 2,
    "student.log_every": 2,
}


def _project(root: Path) -> Path:
    """A throwaway checkout: git + DVC + the project's pipeline files, tiny parameters."""
    root.mkdir(parents=True)
    for name in ("data.dvc", "dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    # the whole package, not only srcore/data (the DVC dependency): a process started in the copy
    # imports srcore from it, and a partial copy would shadow the installed package
    shutil.copytree(REPO / "srcore", root / "srcore", ignore=shutil.ignore_patterns("__pycache__"))
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = None
    for key, value in TINY_FLOW.items():
        section, *rest = key.split(".")
        node = params.setdefault(section, {})
        for k in rest[:-1]:
            node = node.setdefault(k, {})
        node[rest[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    return root


def test_retrain_chain_and_cache(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    root = _project(tmp_path / "proj")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "prefect-results"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from flows.retrain import retrain

    with prefect_test_harness(server_startup_timeout=180):
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


def test_distill_dvmsr_deployment_on_a_real_server(tmp_path):
    root = _project(tmp_path / "proj")
    bin_dir = Path(sys.executable).parent
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "SRCORE_HOME": str(root), "DVC_NO_ANALYTICS": "1",
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results")}
    env.pop("MLFLOW_TRACKING_URI", None)
    # a teacher and prepared shards for the student to learn from
    subprocess.run([sys.executable, "-m", "srcore.cli", "data", "sample", "--out", "data/raw/sample"],
                   cwd=root, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "srcore.cli", "data", "prepare"], cwd=root, env=env, check=True,
                   capture_output=True)
    from srcore.models import build, save_model

    save_model(root / "runs" / "teacher" / "model.pth", build("dvmsr_teacher", 4, embed_dim=8, depths=(1,)),
               "dvmsr_teacher")
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_for_health(api + "/health", server)

        def prefect(*args: str, timeout: int = 300) -> str:
            res = subprocess.run([str(bin_dir / "prefect"), *args], cwd=root, env=env, capture_output=True,
                                 text=True, timeout=timeout)
            assert res.returncode == 0, \
                f"prefect {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            return res.stdout

        prefect("work-pool", "create", "srcore-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
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
        run = subprocess.run([str(bin_dir / "prefect"), "deployment", "run", "distill/dvmsr", "--param",
                              "overrides=" + json.dumps({}), "--watch", "--watch-timeout", "600"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=700)
        # the flow run's own traceback is in the worker's output
        assert run.returncode == 0 and "Completed" in run.stdout, \
            run.stdout[-1500:] + "\n--- worker ---\n" + worker_log.read_text(errors="replace")[-4000:]
        assert (root / "runs" / "student-dvmsr" / "model.pth").is_file()
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
