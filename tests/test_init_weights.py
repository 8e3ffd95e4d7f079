"""Starting a training run from existing weights (``teacher.init`` / ``student.init`` / ``--init``):
every weight format ``eval --weights`` accepts, strict loading with errors that name what does not
fit, the check before Ray starts, lineage tags, and fine-tuning an official model without losing
its Set5 PSNR."""

from __future__ import annotations

import pytest
import torch
from conftest import BENCHMARKS, WEIGHTS, require

from srcore.config import load_params
from srcore.errors import CheckpointError
from srcore.models import build, save_model
from srcore.models.loading import init_weights, load_teacher, read_weights

SMALL = {"embed_dim": 8, "depths": (1,)}


def _small(scale: int = 4, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build("dvmsr", scale, **{**SMALL, **overrides})


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_local_layout_loads_strictly(tmp_path):
    source = _small(seed=1)
    sd = source.state_dict()
    ours = tmp_path / "ours.pth"
    save_model(ours, source, "dvmsr")
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "model.pth", source, "dvmsr")
    layouts = {
        str(ours): "srcore",
        str(tmp_path / "run"): "srcore",  # a run folder: its model.pth
        ours.resolve().as_uri(): "srcore",  # an object-store style URI (pyarrow reads file://)
    }
    for name, payload in {"plain.pth": sd, "basicsr.pth": {"params": sd, "params_ema": sd},
                          "wrapped.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}.items():
        torch.save(payload, tmp_path / name)
    layouts |= {str(tmp_path / "plain.pth"): "plain", str(tmp_path / "basicsr.pth"): "basicsr:params_ema",
                str(tmp_path / "wrapped.pth"): "state_dict"}
    for spec, layout in layouts.items():
        target = _small(seed=2)
        assert not _same(target, source)
        assert init_weights(target, spec, "dvmsr") == layout, spec
        assert _same(target, source), spec


def test_official_release_loads_into_its_preset():
    rlfn = build("rlfn", 4)
    assert init_weights(rlfn, str(require(WEIGHTS / "rlfn_ntire2024_x4.pth")), "rlfn") == "plain"


@pytest.mark.parametrize("case, expected", [
    ("missing", "init {path}: not found"),
    ("truncated", "not a readable PyTorch checkpoint"),
    ("other_arch", "weights are for 'rlfn', not 'dvmsr'"),
    ("other_scale", "weights are for x2, not x4"),
    ("other_width", "shape mismatches"),
    ("foreign_keys", "unexpected keys"),
    ("not_a_dict", "expected a dict of tensors"),
])
def test_bad_init_weights_are_refused_with_a_reason(tmp_path, case, expected):
    path = tmp_path / f"{case}.pth"
    if case == "truncated":
        save_model(path, _small(), "dvmsr")
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "other_arch":
        save_model(path, build("rlfn", 4, feature_channels=8, mid_channels=8), "rlfn")
    elif case == "other_scale":
        save_model(path, _small(scale=2), "dvmsr")
    elif case == "other_width":
        save_model(path, _small(embed_dim=12), "dvmsr")
    elif case == "foreign_keys":
        torch.save({**_small().state_dict(), "head.extra.weight": torch.zeros(1)}, path)
    elif case == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    target = _small(seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        init_weights(target, str(path), "dvmsr")
    assert expected.format(path=path) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


def test_teacher_and_init_share_one_reader(tmp_path):
    save_model(tmp_path / "t.pth", _small(scale=2), "dvmsr")
    with pytest.raises(CheckpointError, match="is x2 but the student is x4|weights are for x2"):
        load_teacher(str(tmp_path / "t.pth"), 4)
    with pytest.raises(CheckpointError, match="teacher .*: not found"):
        read_weights(str(tmp_path / "nothing.pth"), "teacher")


def test_a_bad_init_fails_before_training_starts(tmp_path):
    """The driver-side check refuses it: no Ray, no run folder."""
    from test_train import TINY, _smooth_images

    from srcore.data.prepare import prepare
    from srcore.train.runner import run_stage

    _smooth_images(tmp_path / "raw")
    overrides = {**TINY, "prepare.input": str(tmp_path / "raw"), "prepare.out": str(tmp_path / "patches"),
                 "teacher.ray.storage_path": str(tmp_path / "runs")}
    prepare(load_params(None, overrides).prepare)
    wrong = tmp_path / "x4.pth"
    save_model(wrong, _small(scale=4, embed_dim=8), "dvmsr")  # TINY trains x2
    params = load_params(None, {**overrides, "teacher.init": str(wrong)})
    with pytest.raises(CheckpointError, match="weights are for x4, not x2"):
        run_stage(params, "teacher")
    assert not (tmp_path / "runs").exists()


def test_init_is_in_the_stage_lineage(tmp_path):
    from srcore.tracking.runs import stage_lineage

    params = load_params(None, {"prepare.out": str(tmp_path),
                                "teacher.init": "models:/srcore-rlfn-x4@champion",
                                "student.init": "runs/student-v1"})
    assert stage_lineage(params, "teacher")["init"] == "models:/srcore-rlfn-x4@champion"
    tags = stage_lineage(params, "distill")
    assert tags["init"] == "runs/student-v1" and tags["teacher"] == params.student.teacher
    assert "init" not in stage_lineage(load_params(None, {"prepare.out": str(tmp_path)}), "teacher")


@pytest.mark.slow
def test_init_from_a_registered_model(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    from srcore.tracking.publish import log_and_register

    source = _small(seed=5)
    save_model(tmp_path / "m.pth", source, "dvmsr")
    params = load_params(None, {"eval.datasets": ["embedded"]})
    from srcore.tracking.registry import PromotionPolicy

    reg = log_and_register(params, "teacher", str(tmp_path / "m.pth"), {"embedded_psnr_y": 20.0},
                           policy=PromotionPolicy("embedded_psnr_y"))
    spec = f"models:/{reg['registered_model']}/{reg['version']}"
    target = _small(seed=6)
    assert init_weights(target, spec, "dvmsr") == "srcore"
    assert _same(target, source)


@pytest.mark.slow
def test_fine_tuning_an_official_model_keeps_its_set5_psnr(tmp_path, monkeypatch, ray_local):
    """RLFN (NTIRE 2024 release) fine-tuned for 20 steps at a low learning rate on the sample set
    through Ray Train (the session's cluster): the raw (non-EMA) weights move, and Set5 x4 PSNR-Y
    drops by at most 0.05 dB."""
    from srcore.data.prepare import prepare
    from srcore.data.sample import write_sample
    from srcore.evaluation import evaluate_dataset
    from srcore.models import load_model
    from srcore.train.runner import run_stage

    official = str(require(WEIGHTS / "rlfn_ntire2024_x4.pth"))
    require(BENCHMARKS / "Set5")
    monkeypatch.chdir(tmp_path)
    write_sample(tmp_path / "sample")
    params = load_params(None, {
        "prepare.input": str(tmp_path / "sample" / "train"), "prepare.out": str(tmp_path / "patches"),
        "prepare.scales": [4], "prepare.crop_size": 192, "prepare.step": 96, "prepare.workers": 1,
        "loader.patch_size": 32, "loader.batch_size": 4,
        "teacher.model": "rlfn", "teacher.init": official, "teacher.steps": 20, "teacher.lr": 1.0e-5,
        "teacher.milestones": [0.8], "teacher.ema_decay": None, "teacher.val_every": 20,
        "teacher.val_dataset": str(tmp_path / "sample" / "val" / "HR"), "teacher.ray.cpus_per_worker": 2,
        "teacher.ray.storage_path": str(tmp_path / "runs")})
    prepare(params.prepare)
    result = run_stage(params, "teacher")
    tuned = load_model(result.model_path)
    start = load_model(official, name="rlfn", scale=4)
    assert not _same(tuned, start)  # it did train
    before = evaluate_dataset(start, "Set5", 4, data_root=BENCHMARKS).psnr_y
    after = evaluate_dataset(tuned, "Set5", 4, data_root=BENCHMARKS).psnr_y
    assert before > 32.0  # the official number (32.0x dB): init really loaded the release
    assert after >= before - 0.05, (before, after)


def test_registry_specs_resolve_through_the_declared_entry_point():
    """models:/ specs reach the registry through the resolver the package declares, so the room that
    loads models imports nothing of the one that knows the registry; an unknown scheme is named."""
    from importlib.metadata import entry_points

    from srcore.errors import CheckpointError
    from srcore.models.loading import RESOLVERS, _resolver
    from srcore.tracking.registry import registered_weights

    [declared] = entry_points(group=RESOLVERS, name="models")
    assert declared.load() is registered_weights and _resolver("models:/m@champion") is registered_weights
    assert _resolver("s3://bucket/model.pth") is None and _resolver("runs/teacher") is None
    with pytest.raises(CheckpointError, match="nothing resolves hub:/"):
        read_weights("hub:/someone/model")
