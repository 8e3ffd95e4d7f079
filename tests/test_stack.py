"""The local production stack, for real: PostgreSQL, SeaweedFS S3, MLflow, Prefect, two-node Ray.

One stack for the module (``stack_fixtures.stack``), serving a throwaway checkout. Checks that each
service answers, that MLflow keeps run metadata in PostgreSQL and artifacts in the bucket, that
Prefect's API is backed by PostgreSQL, holds every deployment of the pool, refuses a parameter a
flow does not take and runs a deployment through the worker with its task results in the bucket,
that DVC round-trips through the S3 remote, that the retrain deployment runs end to end on the
stack with no shared disk (patches prepared elsewhere and read from the DVC remote in S3, two-node
Ray with checkpoints in S3, nested MLflow runs, registry) and hits every cache when run again, that
registration survives the MLflow server dying in its middle, that ``up`` restarts a PostgreSQL stuck
in a smart shutdown while MLflow, Prefect and a flow run carry on through it, and that ``down``
leaves none of the processes ``up`` started.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from stack_fixtures import GIT

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


def _mlflow(cfg):
    """A client of the stack's MLflow, for runs and the registry alike (never a registry URI another
    test left set in this process)."""
    from mlflow.tracking import MlflowClient

    uri = cfg.client_env()["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
    import psutil  # the worker asks for runs as often as the configuration says

    worker_env = psutil.Process(rows["prefect-worker"].pids[0]).environ()
    assert worker_env["PREFECT_WORKER_QUERY_SECONDS"] == str(cfg.worker_query_s)
    env = read_env_file(cfg.env_file)
    assert env["MLFLOW_TRACKING_URI"].endswith(f":{cfg.ports.mlflow}")
    assert env["RAY_ADDRESS"] == cfg.ray_address
    assert oct(cfg.env_file.stat().st_mode & 0o777) == "0o600"
    again = up(cfg)
    assert again.started == [] and sorted(again.already_running) == sorted(rows)
    assert {n: r.pids for n, r in rows.items()} == {r.name: r.pids for r in status(cfg)}


def test_mlflow_metadata_in_postgres_and_artifacts_in_bucket(stack, tmp_path):

    cfg, _ = stack
    client = _mlflow(cfg)
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


def test_prefect_on_postgres_holds_the_pool_and_every_deployment(stack):
    """The pool and the deployments live in PostgreSQL (a deployment's run through the worker is the
    end-to-end test's and the PostgreSQL restart's); a parameter a flow does not take is refused."""
    from srcore.stack.services import pool_deployments

    cfg, _ = stack
    env = _env(cfg)
    # the worker's task results go to the stack's bucket (checked after the end-to-end run), not its disk
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "remote-file-system/srcore-results"
    with _pg(cfg, "prefect") as conn, conn.cursor() as cur:
        cur.execute("select name from work_pool")
        assert cfg.work_pool in {r[0] for r in cur.fetchall()}
        # every deployment of the stack's pool in prefect.yaml is there (distill/dvmsr among them)
        cur.execute("select d.name from deployment d join work_queue q on q.id = d.work_queue_id "
                    "join work_pool w on w.id = q.work_pool_id where w.name = %s", (cfg.work_pool,))
        deployed = {r[0] for r in cur.fetchall()}
    assert deployed == set(pool_deployments(cfg.project_dir / "prefect.yaml", cfg.work_pool))
    assert {"dvmsr", "bicubic"} <= deployed
    # a parameter the flow does not take is refused before anything runs
    bad = subprocess.run([str(BIN / "prefect"), "deployment", "run", "distill/dvmsr", "--param", "bogus=1"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    said = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "bogus" in said, said[-2000:]


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
    client = _mlflow(cfg)
    assert client.get_model_version_by_alias(reg["registered_model"], "champion").version == reg["version"]
    assert client.get_run(reg["run_id"]).data.tags["model_path"] == uri
    assert any(reg["run_id"] in key for key in _s3_keys(cfg, "mlflow")), "the run's artifacts are not in S3"


# The tiny profile, cut to a few steps per stage (the stages still run: Ray Train on both nodes with
# checkpoints in S3, evaluation, registration), reading its patches from the DVC remote in S3 and
# validating and evaluating on the embedded images: the flow needs nothing on a local disk.
E2E_OVERRIDES = {
    "loader.patch_size": 12, "loader.batch_size": 4, "loader.shuffle_buffer": 8, "loader.source": "dvc",
    **{f"{stage}.{key}": value for stage in ("teacher", "student") for key, value in {
        "steps": 6, "val_every": 6, "log_every": 2, "ray.num_workers": 2, "ray.cpus_per_worker": 1,
        "ray.storage_path": "s3://ray/e2e", "val_dataset": "embedded"}.items()},
    "teacher.model_overrides": {"embed_dim": 8, "depths": [1]},
    "student.model_overrides": {"embed_dim": 4, "depths": [1]},
    "eval.datasets": ["embedded"],
    "eval.efficiency_size": 32,  # the efficiency figures are checked for being logged, not for their values
}
_PREPARE_AND_PUSH = ("from srcore.data.versioning import reproduce_patches; "
                     "reproduce_patches('.', pull=False, push=True)")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare_elsewhere_and_push(project: Path, where: Path, env: dict[str, str]) -> dict[str, bytes]:
    """Patches made in another checkout (a data machine), pushed to the DVC remote in S3 and pinned by
    the dvc.lock the pipeline's checkout pulls through git; then every local copy is removed. Returns
    the patches' files, for comparing with what DVC brings back."""
    _git(where.parent, "clone", "-q", str(project), str(where))
    made = subprocess.run([sys.executable, "-c", _PREPARE_AND_PUSH], cwd=where, env=env, capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-1500:] + made.stderr[-1500:]
    # the prepare run's own journal (.journal/) is run state that .dvcignore keeps out of DVC
    patches = _tree_bytes(where / "data" / "patches")
    patches = {k: v for k, v in patches.items() if not k.startswith(".journal")}
    _git(where, "add", "dvc.lock", "data.dvc")  # not data/.gitignore: the pipeline's checkout gets no data/
    _git(where, "commit", "-q", "-m", "patches")
    _git(project, "pull", "-q", "--ff-only", str(where), "HEAD")
    subprocess.run(["rm", "-rf", str(where)], check=True)  # the patches and DVC's cache with them
    return patches


def test_retrain_deployment_end_to_end_on_the_stack(stack, tmp_path):
    """No shared disk: the patches reach the Ray workers only through the DVC remote in S3. The
    pipeline's checkout, where the flow runs and the Ray workers start, never holds a data/ folder, so
    any local read of the patches fails the run."""
    from srcore.stack.services import RayCluster

    cfg, _ = stack
    env = _env(cfg)
    project = cfg.project_dir
    assert RayCluster(cfg).nodes_alive() == 2, f"the stack's Ray lost a node; see {cfg.root}/ray"
    original = _prepare_elsewhere_and_push(project, tmp_path / "data-machine", env)
    assert any(k.endswith(".parquet") for k in original) and "manifest.json" in original
    assert not (project / "data").exists()
    argv = [str(BIN / "prefect"), "--no-prompt", "deployment", "run", "retrain/tiny",
            "--param", "overrides=" + json.dumps(E2E_OVERRIDES), "--param", f"address={cfg.ray_address}",
            "--param", "prepare=false", "--param", "gate_metric=embedded_psnr_y",
            "--watch", "--watch-timeout", "1500"]
    res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=1600)
    worker_log = cfg.path("logs", "prefect-worker.log").read_text(errors="replace")
    assert res.returncode == 0 and "Completed" in res.stdout, \
        res.stdout[-2000:] + res.stderr[-1000:] + "\n--- worker ---\n" + worker_log[-6000:]
    assert not (project / "data").exists()  # nothing came to the checkout's disk

    # the flow run is COMPLETED in the PostgreSQL-backed Prefect server
    with _pg(cfg, "prefect") as conn, conn.cursor() as cur:
        cur.execute("select fr.state_type from flow_run fr join deployment d on d.id = fr.deployment_id "
                    "where d.name = 'tiny'")
        assert [r[0] for r in cur.fetchall()] == ["COMPLETED"]
    # checkpoints and exported models of both stages in the Ray bucket; task results in Prefect's
    ray_keys = _s3_keys(cfg, "ray", "e2e/")
    for run in ("teacher", "student"):
        assert f"e2e/{run}/model.pth" in ray_keys, ray_keys[:20]
        assert any(k.startswith(f"e2e/{run}/checkpoint_") for k in ray_keys), ray_keys[:20]
        assert f"e2e/{run}/ray.log" in ray_keys, ray_keys[:20]  # Ray's own lines, kept beside the run
    assert "PlacementGroupCleaner" not in worker_log, worker_log[-3000:]
    assert _s3_keys(cfg, "prefect", "results/")

    # the student is a registered version, champion, its run (in PostgreSQL) with artifacts in S3
    client = _mlflow(cfg)
    name = "srcore-dvmsr-x4"
    champion = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags["model_path"] == "s3://ray/e2e/student/model.pth"
    assert run.data.tags["stage"] == "distill" and "teacher_run_id" in run.data.tags
    assert "embedded_psnr_y" in run.data.metrics
    assert {"flops_g", "peak_mem_mb", "latency_ms"} <= set(run.data.metrics)
    assert any(champion.run_id in k for k in _s3_keys(cfg, "mlflow")), "the run's artifacts are not in S3"
    with _pg(cfg, "mlflow") as conn, conn.cursor() as cur:
        cur.execute("select version from model_versions where name = %s", (name,))
        assert [str(r[0]) for r in cur.fetchall()] == [champion.version]
    # one parent run holds the stage runs; the student's run names its teacher's run
    parent = run.data.tags["mlflow.parentRunId"]
    teacher = client.get_run(run.data.tags["teacher_run_id"])
    assert teacher.data.tags["mlflow.parentRunId"] == parent and teacher.data.tags["stage"] == "teacher"
    assert client.get_run(parent).data.tags["profile"] == "tiny"
    assert len(client.get_metric_history(teacher.info.run_id, "train_loss_rec")) >= 1
    # each stage names the patches it trained on: the pinned listing in S3, its DVC md5, the manifest hash
    outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["outs"]
    pinned = next(o["md5"] for o in outs if o["path"] == "data/patches")
    for stage_run in (teacher, client.get_run(champion.run_id)):
        tags = stage_run.data.tags
        assert tags["patches"].startswith("s3://dvc/e2e/files/md5/") and tags["patches"].endswith(".dir")
        assert tags["patches_dvc_md5"] == pinned
        assert tags["patch_manifest_sha256"] == hashlib.sha256(original["manifest.json"]).hexdigest()
        [used] = stage_run.inputs.dataset_inputs
        assert tags["patches"] in used.dataset.source
        assert used.dataset.digest == tags["patch_manifest_sha256"][:16]

    # the same deployment again, nothing changed: every cache hits (checkpoints and results in S3 are
    # recognised), no stage trains, the registered version stays the only one
    checkpoints = sorted(k for k in ray_keys if "/checkpoint_" in k)
    again = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=1600)
    assert again.returncode == 0 and "Completed" in again.stdout, again.stdout[-2000:] + again.stderr[-1000:]
    assert sorted(k for k in _s3_keys(cfg, "ray", "e2e/") if "/checkpoint_" in k) == checkpoints
    for stage in ("teacher", "distill"):
        newest = client.search_runs(sorted({run.info.experiment_id, teacher.info.experiment_id}),
                                    f"tags.stage = '{stage}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)[0]
        assert newest.info.run_id != (teacher if stage == "teacher" else run).info.run_id
        assert newest.data.tags.get("reused_result") == "true", stage  # recorded result, no training
    with _pg(cfg, "mlflow") as conn, conn.cursor() as cur:
        cur.execute("select version from model_versions where name = %s", (name,))
        assert [str(r[0]) for r in cur.fetchall()] == [champion.version]

    # the pushed patches come back byte-identical in a fresh clone of the pipeline's checkout
    assert _s3_keys(cfg, "dvc", "e2e/")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(project), str(clone))
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", "-q", "prepare"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stdout[-1500:] + pulled.stderr[-1500:]
    assert _tree_bytes(clone / "data" / "patches") == original


def _api(cfg, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{cfg.host}:{cfg.ports.prefect}/api{path}", data=data,
                                 method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def _wait_for(check, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


_REGISTER = """
import json, sys
from flows.register import register
state = register(stage="distill", model_path=sys.argv[1], metrics={"sample-val_psnr_y": 20.0},
                 params_file="params.yaml", gate_metric="sample-val_psnr_y", return_state=True)
print(json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value,
                  "result": state.result(raise_on_failure=False) if state.is_completed() else None}))
"""


def test_registration_survives_the_mlflow_server_dying_in_its_middle(stack, tmp_path):
    """The register flow pauses once its version exists (a fault hook), the MLflow server is killed
    (SIGKILL) and started again; the task's explicit retries finish the registration: exactly one new
    version, whose run holds the metric, and every alias on a version that exists."""

    from srcore.data.sample import write_sample
    from srcore.models import build, save_model
    from srcore.stack.process import recorded
    from srcore.stack.services import MLflowServer
    from srcore.tracking.publish import PAUSE_ENV

    cfg, _ = stack
    sample = cfg.project_dir / "data" / "raw" / "sample"
    if not (sample / "val").is_dir():  # the comparison grid's images (the end-to-end run writes them too)
        write_sample(sample)
    client = _mlflow(cfg)
    name = "srcore-dvmsr-x4"
    before = {mv.version for mv in client.search_model_versions(f"name='{name}'")}
    model = tmp_path / "model.pth"
    save_model(model, build("dvmsr", 4, embed_dim=4, depths=[1]), "dvmsr")
    pause = tmp_path / "pause"
    env = {**_env(cfg), PAUSE_ENV: str(pause)}
    proc = subprocess.Popen([sys.executable, "-c", _REGISTER, str(model)], cwd=cfg.project_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (pause / "paused").exists() or proc.poll() is not None, "the pause point", 600)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        mid = [mv.version for mv in client.search_model_versions(f"name='{name}'")
               if mv.version not in before]
        assert len(mid) == 1  # paused between the version's creation and its promotion
        server = MLflowServer(cfg)
        # the whole process group at once: killing workers one by one lets the master start new ones
        for victim in recorded(server.pid_file):
            os.killpg(os.getpgid(victim.pid), signal.SIGKILL)
        server.stop()  # reaps them and clears the PID file
        assert not server.healthy()
        server.check_ports()
        server.start()  # booting takes far longer than the paused attempt needs to hit the dead port
        (pause / "resume").touch()

        def retrying() -> bool:
            runs = _api(cfg, "/task_runs/filter", {"task_runs": {"name": {"like_": "mlflow-log-register"}},
                                                    "sort": "EXPECTED_START_TIME_DESC", "limit": 1})
            return bool(runs) and runs[0]["state"]["name"] in ("AwaitingRetry", "Retrying")

        _wait_for(retrying, "the register task to fail and await its retry", 180)
        server.ready()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        (pause / "resume").parent.mkdir(parents=True, exist_ok=True)
        (pause / "resume").touch()
    assert proc.returncode == 0, err[-4000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["state"] == "COMPLETED", err[-4000:]
    flow_run = _api(cfg, f"/flow_runs/{outcome['flow_run_id']}")
    assert flow_run["state_type"] == "COMPLETED"
    task_runs = _api(cfg, "/task_runs/filter", {"flow_runs": {"id": {"any_": [outcome["flow_run_id"]]}}})
    register_runs = [t for t in task_runs if t["name"].startswith("mlflow-log-register")]
    assert len(register_runs) == 1 and register_runs[0]["run_count"] >= 2  # it was retried

    versions = {mv.version: mv for mv in client.search_model_versions(f"name='{name}'")}
    new = sorted(set(versions) - before)
    assert new == mid and outcome["result"]["version"] == mid[0]  # exactly one new version: the first one
    aliases = client.get_registered_model(name).aliases
    assert aliases.get("challenger") == mid[0]
    assert set(aliases.values()) <= set(versions)  # no alias on a version that does not exist
    run = client.get_run(versions[mid[0]].run_id)
    assert run.data.metrics["sample-val_psnr_y"] == pytest.approx(20.0) and run.info.status == "FINISHED"
    assert client.get_model_version(name, mid[0]).tags["promotion.decision"] in ("promoted", "refused")


_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def test_postgres_stuck_in_a_smart_shutdown_is_restarted_and_its_clients_reconnect(stack):
    """SIGTERM puts PostgreSQL in a smart shutdown: it waits for the sessions MLflow and Prefect keep
    in their pools and refuses new ones. ``status`` says it does not answer, ``up`` restarts it after
    the grace (a fast shutdown, the same data), and both servers answer from it again without a
    restart of their own, while a deployment's flow run goes on through it."""
    from srcore.stack import ServiceState, status, up
    from srcore.stack.services import Postgres

    cfg, _ = stack
    pg = Postgres(cfg)
    client = _mlflow(cfg)
    experiment = client.create_experiment("postgres-restart")
    before = {r.name: r.pids for r in status(cfg)}
    deployment = _api(cfg, "/deployments/name/evaluate/bicubic")
    flow_run = _api(cfg, f"/deployments/{deployment['id']}/create_flow_run", {})

    def run_state() -> str:
        return _api(cfg, f"/flow_runs/{flow_run['id']}")["state_type"]

    _wait_for(lambda: run_state() != "SCHEDULED", "the worker to take the flow run", 120)
    with _pg(cfg, "postgres") as conn, conn.cursor() as cur:
        cur.execute("select distinct datname from pg_stat_activity where datname in ('mlflow', 'prefect')")
        held = {r[0] for r in cur.fetchall()}
    conn.close()  # ours must not be among the sessions the smart shutdown waits for
    assert held == {"mlflow", "prefect"}
    [postmaster] = before["postgres"]
    os.kill(postmaster, signal.SIGTERM)
    _wait_for(lambda: not pg.healthy(), "PostgreSQL to refuse new sessions", 30)
    stuck = {r.name: r for r in status(cfg)}["postgres"]
    assert stuck.state is ServiceState.NOT_ANSWERING and stuck.pids == [postmaster]

    t0 = time.monotonic()
    report = up(cfg.model_copy(update={"answer_grace_s": 3}))
    took = time.monotonic() - t0
    in_flight = run_state()
    print(f"up restarted postgres in {took:.1f} s; the flow run was {in_flight}")
    assert took < 60 and not report.started and list(report.restarted) == ["postgres"], report
    assert report.restarted["postgres"] == (f"postgres: process {postmaster} alive but not answering "
                                            "for 3 s; restarting it")
    after = {r.name: r for r in status(cfg)}
    assert all(r.state is ServiceState.RUNNING for r in after.values()), after
    assert after["postgres"].pids != [postmaster]
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    assert {n: r.pids for n, r in after.items() if n != "postgres"} == \
        {n: pids for n, pids in before.items() if n != "postgres"}  # nothing else was restarted
    # both servers answer from the restarted database
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    assert [e.name for e in client.search_experiments(filter_string="name = 'postgres-restart'")] == \
        ["postgres-restart"]
    assert _api(cfg, "/health") is True
    assert _api(cfg, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    _wait_for(lambda: run_state() in _FINAL, "the flow run to finish", 300)
    final = _api(cfg, f"/flow_runs/{flow_run['id']}")["state"]
    assert final["type"] == "COMPLETED", final


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
    # nothing of the stack is left: no process names its folder (Ray's, the servers', the worker's)
    from srcore.stack.process import pids_matching

    assert not pids_matching(str(cfg.root))
