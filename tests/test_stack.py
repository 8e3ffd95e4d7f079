"""The local production stack, for real: PostgreSQL, SeaweedFS S3, MLflow, Prefect, two-node Ray.

One stack for the module (``stack_fixtures.stack``). Checks that each service answers, that MLflow
keeps run metadata in PostgreSQL and artifacts in the bucket, that Prefect's API is backed by
PostgreSQL and runs a deployment through the worker, that DVC round-trips through the S3 remote,
and that ``down`` leaves none of the processes ``up`` started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

pytest_plugins = ["stack_fixtures"]  # the `stack` fixture
pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _env(cfg) -> dict[str, str]:
    from srcore.stack.services import service_env

    return service_env(cfg)


def _pg(cfg, database: str):
    import psycopg2

    c = cfg.credentials()
    return psycopg2.connect(host=cfg.host, port=cfg.ports.postgres, user=c.pg_user, password=c.pg_password,
                            dbname=database)


def _s3_keys(cfg, bucket: str, prefix: str = "") -> list[str]:
    from srcore.stack.services import SeaweedFS

    pages = SeaweedFS(cfg).client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_every_service_answers_and_second_up_is_a_no_op(stack):
    from srcore.stack import status, up
    from srcore.stack.config import read_env_file
    from srcore.stack.services import RayCluster

    cfg, report = stack
    rows = {r.name: r for r in status(cfg)}
    assert set(rows) == {"postgres", "seaweedfs", "mlflow", "prefect-server", "ray", "prefect-worker"}
    assert all(r.healthy and r.pids for r in rows.values()), rows
    assert RayCluster(cfg).nodes_alive() == 2
    env = read_env_file(cfg.env_file)
    assert env["MLFLOW_TRACKING_URI"].endswith(f":{cfg.ports.mlflow}")
    assert env["RAY_ADDRESS"] == cfg.ray_address
    assert oct(cfg.env_file.stat().st_mode & 0o777) == "0o600"
    again = up(cfg)
    assert again.started == [] and sorted(again.already_running) == sorted(rows)
    assert {n: r.pids for n, r in rows.items()} == {r.name: r.pids for r in status(cfg)}


def test_mlflow_metadata_in_postgres_and_artifacts_in_bucket(stack, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg, _ = stack
    client = MlflowClient(tracking_uri=cfg.client_env()["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("stack-test")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "psnr", 31.5)
    (tmp_path / "note.txt").write_text("hello from the stack\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    keys = _s3_keys(cfg, "mlflow")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    with _pg(cfg, "mlflow") as conn, conn.cursor() as cur:
        cur.execute("select value from metrics where run_uuid = %s and key = 'psnr'", (run.info.run_id,))
        assert cur.fetchone()[0] == pytest.approx(31.5)


def test_prefect_on_postgres_runs_a_deployment_through_the_worker(stack):
    cfg, _ = stack
    env = _env(cfg)
    argv = [str(BIN / "prefect"), "--no-prompt", "deployment", "run", "evaluate/bicubic", "--watch",
            "--watch-timeout", "300"]
    res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with _pg(cfg, "prefect") as conn, conn.cursor() as cur:
        cur.execute("select name from work_pool")
        assert cfg.work_pool in {r[0] for r in cur.fetchall()}
        cur.execute("select d.name from deployment d join flow f on f.id = d.flow_id "
                    "where f.name = 'evaluate'")
        assert [r[0] for r in cur.fetchall()] == ["bicubic"]
        cur.execute("select fr.state_type from flow_run fr join deployment d on d.id = fr.deployment_id "
                    "where d.name = 'bicubic'")
        assert [r[0] for r in cur.fetchall()] == ["COMPLETED"]


def test_dvc_push_to_s3_and_pull_back_byte_identical(stack, tmp_path):
    cfg, _ = stack
    env = {**_env(cfg), "DVC_NO_ANALYTICS": "1"}
    dvc = str(BIN / "dvc")
    payload = os.urandom(300_000)

    def run(*args: str) -> None:
        res = subprocess.run([dvc, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"dvc {' '.join(args)}: {res.stdout[-1500:]}{res.stderr[-1500:]}"

    run("init", "--no-scm", "-q")
    run("remote", "add", "-d", "stack", "s3://dvc/test")
    run("remote", "modify", "stack", "endpointurl", cfg.s3_endpoint)
    (tmp_path / "shard.bin").write_bytes(payload)
    run("add", "-q", "shard.bin")
    run("push", "-q")
    md5 = (tmp_path / "shard.bin.dvc").read_text().split("md5: ")[1].split()[0]
    assert any(k.endswith(md5[2:]) for k in _s3_keys(cfg, "dvc", "test/")), "pushed object not in the bucket"
    (tmp_path / "shard.bin").unlink()
    subprocess.run(["rm", "-rf", str(tmp_path / ".dvc" / "cache")], check=True)
    run("pull", "-q")
    assert (tmp_path / "shard.bin").read_bytes() == payload


def test_a_model_in_the_bucket_is_hashed_evaluated_and_registered(stack, tmp_path, monkeypatch):
    """Training with ``storage_path: s3://...`` leaves the model in the bucket: the later stages
    must hash, load (to evaluate) and register it from there."""
    from mlflow.tracking import MlflowClient

    from flows.common import file_digest
    from srcore.config import load_params
    from srcore.data.shards import file_sha256
    from srcore.errors import CheckpointError
    from srcore.models import build, load_model, save_model
    from srcore.stack.services import SeaweedFS
    from srcore.tracking.publish import log_and_register
    from srcore.tracking.registry import PromotionPolicy

    cfg, _ = stack
    for key, value in cfg.client_env().items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "model.pth"
    model = build("dvmsr", 2, embed_dim=4, depths=[1])
    save_model(local, model, "dvmsr")
    SeaweedFS(cfg).client().upload_file(str(local), "ray", "runs/tiny/model.pth")
    uri = "s3://ray/runs/tiny/model.pth"
    assert file_digest(uri) == file_sha256(local)
    loaded = load_model(uri)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="s3://ray/runs/missing.pth"):
        load_model("s3://ray/runs/missing.pth")
    metrics = {"embedded_psnr_y": 30.0, "embedded_ssim_y": 0.9}
    params = load_params(None, {"eval.datasets": ["embedded"], "prepare.out": str(tmp_path / "patches"),
                                "student.model": "dvmsr", "student.scale": 2})
    reg = log_and_register(params, "distill", uri, metrics, policy=PromotionPolicy("embedded_psnr_y"))
    client = MlflowClient(tracking_uri=cfg.client_env()["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias(reg["registered_model"], "champion").version == reg["version"]
    assert client.get_run(reg["run_id"]).data.tags["model_path"] == uri
    assert any(reg["run_id"] in key for key in _s3_keys(cfg, "mlflow")), "the run's artifacts are not in S3"


def test_down_stops_exactly_what_up_started(stack):
    from srcore.stack import down, status

    cfg, _ = stack
    pids = [pid for r in status(cfg) for pid in r.pids]
    stopped = down(cfg)
    assert set(pids) <= {p for ps in stopped.values() for p in ps}
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left
    assert not cfg.env_file.exists()
    assert not any(r.pids or r.healthy for r in status(cfg))
