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
    from srcore.tracking.runs import stage_lineage

    from test_train import TINY, _smooth_images

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
