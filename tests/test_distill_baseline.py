"""The no-distillation baseline: a distill stage with every distillation weight at 0 trains the student
plainly, without loading (or needing) the teacher, and its lineage names no teacher."""

from __future__ import annotations

import pytest
import torch

from srcore.config import DistillParams, LoaderParams, load_params
from srcore.errors import CheckpointError
from srcore.train.loop import setup
from srcore.train.preflight import check_training_inputs

PLAIN = {"w_out": 0.0, "w_feat": 0.0, "w_depth": 0.0}
SMALL = {"model": "dvmsr", "model_overrides": {"embed_dim": 8, "depths": [1]}}


def _config(tmp_path, **train):
    cfg = DistillParams(**SMALL, teacher=str(tmp_path / "no-teacher.pth"), **train)
    return {"stage": "distill", "train": cfg.model_dump(mode="json"),
            "loader": LoaderParams(patch_size=8).model_dump(mode="json"), "faults": {}}


def test_zero_weights_train_plainly_without_the_teacher(tmp_path):
    assert not DistillParams(**PLAIN).distills
    assert DistillParams(w_out=0.5, w_feat=0.0).distills
    state = setup(_config(tmp_path, **PLAIN), 0, 1, torch.device("cpu"))
    assert state.teacher is None and not state.distill
    with pytest.raises(CheckpointError, match="no-teacher.pth: not found"):
        setup(_config(tmp_path, w_out=1.0), 0, 1, torch.device("cpu"))  # distilling needs the teacher


def test_baseline_lineage_and_preflight_need_no_teacher(tmp_path):
    from test_train import TINY, _smooth_images

    from srcore.tracking.runs import stage_lineage

    _smooth_images(tmp_path / "raw")
    overrides = {**TINY, "prepare.input": str(tmp_path / "raw"), "prepare.out": str(tmp_path / "patches"),
                 "student.teacher": str(tmp_path / "absent.pth")}
    from srcore.data.prepare import prepare

    prepare(load_params(None, overrides).prepare)
    plain = load_params(None, {**overrides, **{f"student.{k}": v for k, v in PLAIN.items()}})
    assert check_training_inputs(plain, "distill").name == "student"
    assert "teacher" not in stage_lineage(plain, "distill")
    with pytest.raises(CheckpointError, match="absent.pth"):
        check_training_inputs(load_params(None, overrides), "distill")


def test_feature_terms_relative_to_the_teacher_scale():
    """``feat_norm="teacher"`` makes the feature terms independent of the teacher's feature scale."""
    from srcore.models.base import Features
    from srcore.train.losses import DistillationLoss

    torch.manual_seed(0)
    t = torch.rand(2, 4, 6, 6) + 0.5
    student, sr = Features(deep=0.9 * t, blocks=[0.9 * t]), torch.zeros(2, 3, 6, 6)
    for scale in (1.0, 100.0):
        teacher = Features(deep=scale * t, blocks=[scale * t])
        plain = DistillationLoss(student, teacher, w_feat=1.0, w_depth=1.0)
        normed = DistillationLoss(student, teacher, w_feat=1.0, w_depth=1.0, feat_norm="teacher")
        s = Features(deep=0.9 * scale * t, blocks=[0.9 * scale * t])
        assert float(normed(sr, s, sr, teacher)["feat"]) == pytest.approx(0.1, rel=1e-5)
        assert float(normed(sr, s, sr, teacher)["depth"]) == pytest.approx(0.1, rel=1e-5)
        expected = 0.1 * scale * float(t.mean())
        assert float(plain(sr, s, sr, teacher)["feat"]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(Exception, match="feat_norm 'batch'"):
        DistillationLoss(student, teacher, feat_norm="batch")


def test_only_the_terms_in_use_have_adapters():
    """Output distillation alone trains no adapter (DDP fails on parameters without gradients)."""
    from srcore.models.base import Features
    from srcore.train.losses import DistillationLoss

    student = Features(deep=torch.rand(1, 16, 4, 4), blocks=[torch.rand(1, 16, 4, 4)] * 2)
    teacher = Features(deep=torch.rand(1, 32, 4, 4), blocks=[torch.rand(1, 32, 4, 4)] * 4)

    def trainable(**weights) -> int:
        return sum(p.numel() for p in DistillationLoss(student, teacher, **weights).parameters())

    assert trainable(w_out=1.0, w_feat=0.0) == 0
    assert trainable(w_out=0.0, w_feat=1.0) == 16 * 32 + 32
    assert trainable(w_out=0.0, w_feat=0.0, w_depth=1.0) == 2 * (16 * 32 + 32)
