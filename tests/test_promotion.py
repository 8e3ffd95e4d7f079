"""The registry gate against the champion on every configured benchmark: both numbers of each are kept
on the version, with the teacher the student was distilled from; a challenger that wins the gate
metric but loses another benchmark by more than the tolerance is refused."""

from __future__ import annotations

import pytest
import torch

from srcore.config import load_params
from srcore.models import build, save_model
from srcore.tracking.registry import PromotionPolicy

pytestmark = pytest.mark.slow


def _checkpoint(path, seed: int) -> str:
    torch.manual_seed(seed)
    model = build("rlfn", 4, feature_channels=8, mid_channels=8, esa_channels=4, num_blocks=1)
    save_model(path, model, "rlfn")
    return str(path)


def test_gate_compares_every_benchmark_and_records_the_teacher(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    from mlflow import MlflowClient

    from srcore.tracking.publish import log_and_register

    teacher = str(tmp_path / "teacher-run")
    params = load_params(None, {"eval.datasets": ["embedded", "sample-val"], "student.teacher": teacher})
    policy = PromotionPolicy("embedded_psnr_y", margin=0.01)
    base = {"params": 1000.0, "latency_ms": 5.0}
    first = log_and_register(params, "distill", _checkpoint(tmp_path / "a.pth", 0),
                             {**base, "embedded_psnr_y": 25.0, "sample-val_psnr_y": 27.0}, policy=policy)
    assert first["promoted"]
    # better on the gate, but 0.3 dB worse on the other configured benchmark: refused
    lopsided = log_and_register(params, "distill", _checkpoint(tmp_path / "b.pth", 1),
                                {**base, "embedded_psnr_y": 25.5, "sample-val_psnr_y": 26.7}, policy=policy)
    assert not lopsided["promoted"]
    assert lopsided["reason"].startswith("sample-val_psnr_y 26.700 is more than 0.05 below champion")
    # better on the gate and within the tolerance elsewhere: promoted
    better = log_and_register(params, "distill", _checkpoint(tmp_path / "c.pth", 2),
                              {**base, "embedded_psnr_y": 25.5, "sample-val_psnr_y": 26.98}, policy=policy)
    assert better["promoted"]

    client = MlflowClient(mlflow_server, mlflow_server)
    name = first["registered_model"]
    assert client.get_model_version_by_alias(name, "champion").version == better["version"]
    tags = client.get_model_version(name, lopsided["version"]).tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.champion_version"] == first["version"]
    assert tags["promotion.embedded_psnr_y.challenger"] == "25.5000"
    assert tags["promotion.embedded_psnr_y.champion"] == "25.0000"
    assert tags["promotion.sample-val_psnr_y.challenger"] == "26.7000"
    assert tags["promotion.sample-val_psnr_y.champion"] == "27.0000"
    assert tags["promotion.teacher"] == teacher
