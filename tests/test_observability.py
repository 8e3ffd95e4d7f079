"""Watching a run through the MLflow API (the session's tracking server): loss points arrive while
training runs, the teacher's run nests under a parent, `srcore distill` logs to the server, prints
its run's URL and links the student's run to its teacher's, and the patch manifest is the input."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import pytest
import yaml
from test_train import TINY, _smooth_images

from srcore.config import load_params

pytestmark = pytest.mark.slow

LIVE = {"teacher.steps": 12, "teacher.val_every": 12, "teacher.log_every": 2,
        "student.name": "cli-student", "student.steps": 4, "student.val_every": 4, "student.log_every": 2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("observe")
    _smooth_images(root / "raw", n=2)
    _smooth_images(root / "val", n=2, size=48)
    from srcore.data.prepare import prepare

    prepare(load_params(None, {**TINY, "prepare.input": str(root / "raw"),
                               "prepare.out": str(root / "patches")}).prepare)
    return root


def _overrides(workdir: Path) -> dict:
    runs = str(workdir / "runs")
    return {**TINY, **LIVE, "prepare.out": str(workdir / "patches"), "teacher.ray.storage_path": runs,
            "student.ray.storage_path": runs, "teacher.val_dataset": str(workdir / "val"),
            "student.val_dataset": str(workdir / "val")}


def _cli_distill(teacher: str, workdir: Path):
    from typer.testing import CliRunner

    from srcore.cli import app

    (workdir / "p.yaml").write_text(yaml.safe_dump({}))
    sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
            for k, v in _overrides(workdir).items()]
    return CliRunner().invoke(app, ["distill", "--params", "p.yaml", "--teacher", teacher,
                                    *[a for s in sets for a in ("--set", s)]])


def test_live_points_nesting_and_teacher_link(workdir, mlflow_server, ray_local, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(workdir)
    from mlflow import MlflowClient

    from srcore.tracking.live import parent_run, run_tracked_stage

    with parent_run("retrain-test") as parent, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = load_params(None, _overrides(workdir))
        teacher, t_run = run_tracked_stage(params, "teacher", parent_run_id=parent)
    # the patch input is logged without MLflow's warning about its own twice-registered local source
    assert not [w for w in caught if "interpreted in multiple ways" in str(w.message)]
    finished_ms = time.time() * 1000
    client = MlflowClient(mlflow_server, mlflow_server)
    t = client.get_run(t_run.run_id)
    assert t.data.tags["mlflow.parentRunId"] == parent and t.info.status == "FINISHED"
    assert t_run.url.startswith(mlflow_server) and t_run.url.endswith(t_run.run_id)

    # one point every log_every steps, logged while training ran: before the final model was exported
    losses = client.get_metric_history(t_run.run_id, "train_loss_rec")
    assert [m.step for m in losses] == [2, 4, 6, 8, 10, 12]
    exported_ms = Path(teacher.model_path).stat().st_mtime * 1000
    assert sum(m.timestamp < exported_ms for m in losses) >= 5 and exported_ms < finished_ms
    for key in ("train_lr", "train_samples_per_s", "train_memory_peak_mb"):
        assert [m.step for m in client.get_metric_history(t_run.run_id, key)] == [2, 4, 6, 8, 10, 12], key
    assert [m.step for m in client.get_metric_history(t_run.run_id, "train_val_psnr_y")] == [12]
    inputs = t.inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["patches-x2"] and len(inputs[0].dataset.digest) == 16
    assert t.data.tags["model_path"] == teacher.model_path

    # the CLI: the server's run (no local store), its URL printed, the teacher found by its model path
    result = _cli_distill(teacher.model_path, workdir)
    assert result.exit_code == 0, result.output
    printed = re.search(r"MLflow:(http\S+?/runs/([0-9a-f]{32}))", "".join(result.output.split()))
    assert printed and printed[1].startswith(mlflow_server), result.output
    s = client.get_run(printed[2])
    assert s.data.tags["stage"] == "distill" and s.data.tags["teacher_run_id"] == t_run.run_id
    assert {"train_loss_rec", "train_loss_distill_feat", "train_val_psnr_y"} <= set(s.data.metrics)
    assert not (workdir / "mlflow.db").exists()
