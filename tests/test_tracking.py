"""MLflow against the session's tracking server on loopback (``mlflow_server`` in conftest): logging,
registration, promotion and its refusals, the labelled comparison grid, loading models:/ URIs at any
image size, and an unreachable server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srcore.cli import app
from srcore.config import load_params
from srcore.errors import ConfigError
from srcore.models import build, save_model
from srcore.tracking.registry import PromotionPolicy

pytestmark = pytest.mark.slow


def _checkpoint(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    save_model(path, build("dvmsr", 4, embed_dim=8, depths=(1,)), "dvmsr")
    return str(path)


def test_register_promote_refuse_and_load(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    from mlflow import MlflowClient

    from srcore.tracking.publish import log_and_register

    params = load_params(None, {"eval.datasets": ["embedded"]})
    policy = PromotionPolicy(gate_metric="embedded_psnr_y", margin=0.05)
    first = log_and_register(params, "distill", _checkpoint(tmp_path / "a.pth", 0),
                             {"embedded_psnr_y": 25.0, "params": 1000.0, "latency_ms": 5.0},
                             history=[{"step": 1, "loss": 0.5, "lr": 1e-3, "val_psnr_y": 20.0}],
                             policy=policy)
    assert first["promoted"] and first["registered_model"] == "srcore-dvmsr-x4"
    worse = log_and_register(params, "distill", _checkpoint(tmp_path / "b.pth", 1),
                             {"embedded_psnr_y": 25.02, "params": 1000.0, "latency_ms": 5.0}, policy=policy)
    assert not worse["promoted"]
    over = log_and_register(params, "distill", _checkpoint(tmp_path / "c.pth", 2),
                            {"embedded_psnr_y": 30.0, "params": 10_000.0, "latency_ms": 5.0},
                            policy=PromotionPolicy("embedded_psnr_y", 0.0, max_params=5000))
    assert not over["promoted"] and "budget" in over["reason"]
    heavy = log_and_register(params, "distill", _checkpoint(tmp_path / "d.pth", 3),
                             {"embedded_psnr_y": 30.0, "params": 1000.0, "latency_ms": 5.0, "flops_g": 2.5},
                             policy=PromotionPolicy("embedded_psnr_y", 0.0, max_flops_g=1.0))
    assert not heavy["promoted"] and heavy["reason"] == "FLOPs 2.50 G exceed the budget 1.0 G"
    client = MlflowClient(mlflow_server, mlflow_server)
    name = "srcore-dvmsr-x4"
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]
    assert client.get_model_version_by_alias(name, "challenger").version == heavy["version"]
    tags = client.get_model_version(name, worse["version"]).tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.challenger_value"] == "25.0200" and tags["promotion.champion_value"] == "25.0000"
    run = client.get_run(first["run_id"])
    assert run.data.params["train.model"] == "dvmsr" and "git_commit" in run.data.tags
    assert [m.value for m in client.get_metric_history(first["run_id"], "train_loss")] == [0.5]
    grid = client.download_artifacts(first["run_id"], "comparison_bicubic_teacher_student_hr.png",
                                     str(tmp_path))
    from PIL import Image

    width, height = Image.open(grid).size
    assert height > 3 * 48 and width > 2 * 48  # three labelled crops of bicubic | student | HR

    # any image size runs after loading (not a shape-specialised export)
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    for h, w in ((9, 13), (20, 16)):
        out = pyfunc.predict(np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8))
        assert out.shape == (1, 4 * h, 4 * w, 3) and out.dtype == np.uint8
    result = CliRunner().invoke(app, ["eval", "--model", "dvmsr", "--weights", f"models:/{name}@champion",
                                      "--dataset", "embedded", "--scale", "4", "--json", "-"])
    assert result.exit_code == 0, result.output


def test_unreachable_tracking_server_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    from srcore.tracking.publish import log_and_register

    with pytest.raises(ConfigError, match="cannot reach the MLflow tracking server"):
        log_and_register(load_params(None), "distill", _checkpoint(tmp_path / "a.pth", 0), {"x": 1.0})


def test_register_cache_key_names_the_store_not_only_its_uri(tmp_path, monkeypatch):
    """A store made anew at the same URI (a fresh clone's mlflow.db in the same folder) is another
    store: the register task's cache key changes, so the model is registered there, not taken as
    registered; the same store keeps its key (a rerun hits the cache); an unreachable store never
    hits a cache."""
    from flows.register import _register_key
    from srcore.tracking.runs import store_identity

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = {"stage": "distill", "model_path": _checkpoint(tmp_path / "m.pth", 0), "gate_metric": "psnr",
            "margin": 0.0, "max_params": None, "max_latency_ms": None}
    first = _register_key(None, args)
    assert _register_key(None, args) == first

    # a fresh clone's demo: a new process, a new mlflow.db at the same path (a process keeps the
    # SQLite stores it opened, so this one could not see the file replaced)
    fresh = ("import os; os.remove('mlflow.db'); "
             "from srcore.tracking.runs import store_identity as s; print(s())")
    res = subprocess.run([sys.executable, "-c", fresh], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    again = res.stdout.strip().splitlines()[-1]
    assert again.split("#")[0] == store_identity().split("#")[0] and again != store_identity()
    dead = "http://127.0.0.1:9"
    monkeypatch.setenv("SRCORE_TRACKING_TIMEOUT", "2")
    assert store_identity(dead) != store_identity(dead)
