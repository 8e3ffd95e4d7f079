"""What the register stage does: log a scored model's run, register it, promote it."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from srcore.config import Params, TrainParams
from srcore.data.benchmarks import iter_benchmark
from srcore.inference import upscale_image
from srcore.metrics.quality import psnr_y
from srcore.models import build, load_model
from srcore.models.base import SRModel
from srcore.tracking.packaging import log_model_version, log_onnx
from srcore.tracking.registry import PromotionPolicy, promote, registered_name
from srcore.tracking.runs import (
    bounded_requests,
    comparison_grid,
    configure,
    loggable_params,
    stage_lineage,
    tracking_timeout,
)

log = logging.getLogger(__name__)

__all__ = ["log_and_register", "local_model_file", "PAUSE_ENV", "DIGEST_TAG"]

# Fault drill, not a user setting: a folder; registration writes ``paused`` there once its version
# exists and waits for ``resume`` before promoting (a test kills the server in that gap).
PAUSE_ENV = "SRCORE_REGISTER_PAUSE"
# The run tag naming the registered file's content; a retried registration finds its version by it.
DIGEST_TAG = "model_sha256"
# Runs an attempt here opened; one an attempt left active (the server died before it closed) is closed.
_opened: set[str] = set()


@contextmanager
def local_model_file(model_path: str) -> Iterator[str]:
    """A local copy of a model kept in an object store (``s3://...``, as training writes it when
    ``storage_path`` is a URI) for as long as the block runs; local paths pass through unchanged."""
    from srcore.storage import fetch_to_local, is_uri

    if not is_uri(model_path):
        yield model_path
        return
    with tempfile.TemporaryDirectory(prefix="srcore-model-") as tmp:
        yield str(fetch_to_local(model_path, tmp))


def _crop_rows(student: SRModel, teacher_path: str | None, dataset: str, scale: int, crops: int = 3,
               size: int = 192) -> list[list[tuple[str, np.ndarray]]]:
    """Centre crops of the first ``crops`` images: bicubic | teacher | student | HR, each labelled
    with its PSNR-Y on the crop (the HR with the image's name)."""
    models = [("bicubic", build("bicubic", scale))]
    if teacher_path:
        models.append(("teacher", load_model(teacher_path)))
    models.append(("student", student))
    rows = []
    for i, item in enumerate(iter_benchmark(dataset, scale)):
        if i == crops:
            break
        h, w = item.hr.shape[:2]
        c = min(h, w, size)
        y, x = (h - c) // 2, (w - c) // 2
        hr = item.hr[y:y + c, x:x + c]
        row = []
        for label, model in models:
            sr = upscale_image(model, item.lr)[y:y + c, x:x + c]
            row.append((f"{label} {psnr_y(sr, hr, border=scale):.2f} dB", sr))
        rows.append([*row, (f"HR {item.name}", hr)])
    return rows


def log_and_register(params: Params, stage: str, model_path: str, metrics: dict[str, float],
                     history: list[dict[str, Any]] | None = None, teacher_path: str | None = None,
                     policy: PromotionPolicy | None = None, register: bool = True,
                     run_id: str | None = None) -> dict[str, Any]:
    """The MLflow run of a trained model completed: evaluation, lineage, images, the packaged model;
    then register it as ``srcore-<arch>-x<scale>`` and apply promotion. ``run_id``: the stage's
    live-tracked run (``srcore.tracking.live``) to complete; without it a new run gets the params
    and ``history`` as step metrics. ``model_path``/``teacher_path`` may be object-store URIs; the
    run's tag keeps the URI.

    Safe to retry (the register flow's task does, with delays): the model's content digest is a tag
    of its run, so an attempt that finds a version whose run has this file's digest completes that
    run and version instead of registering another. MLflow's own HTTP retries are bounded here
    (``SRCORE_TRACKING_TIMEOUT``), so a dead server fails the attempt in seconds, not minutes."""
    with local_model_file(model_path) as local_path, local_model_file(teacher_path or "") as local_teacher, \
            bounded_requests(tracking_timeout()):
        return _log_and_register(params, stage, model_path, local_path, metrics, history,
                                 local_teacher or None, policy, register, run_id)


def _pause_point() -> None:
    folder = os.environ.get(PAUSE_ENV)
    if not folder or os.path.exists(os.path.join(folder, "paused")):
        return
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "paused"), "w").close()
    log.warning("%s: registration paused until %s/resume exists", PAUSE_ENV, folder)
    deadline = time.monotonic() + 900
    while not os.path.exists(os.path.join(folder, "resume")) and time.monotonic() < deadline:
        time.sleep(0.2)


def _registered_version(client, name: str, digest: str):
    """The version of ``name`` registered from a run tagged with this file's ``digest``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:  # no such registered model yet
        return None
    for mv in sorted(versions, key=lambda v: int(v.version)):
        if mv.run_id and client.get_run(mv.run_id).data.tags.get(DIGEST_TAG) == digest:
            return mv
    return None


def _close_leftover_run() -> None:
    """An earlier attempt in this thread whose server died left its run active: close it first."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id in _opened:
        mlflow.end_run("FAILED")


def _log_and_register(params: Params, stage: str, model_path: str, local_path: str, metrics: dict[str, float],
                      history: list[dict[str, Any]] | None, teacher_path: str | None,
                      policy: PromotionPolicy | None, register: bool, run_id: str | None) -> dict[str, Any]:
    import mlflow

    from srcore.data.shards import file_sha256

    cfg: TrainParams = params.stage(stage)
    client = configure()
    _close_leftover_run()
    model = load_model(local_path)
    name = registered_name(model.arch, model.scale)
    digest = file_sha256(local_path)
    existing = _registered_version(client, name, digest) if register else None
    if existing is not None:
        log.info("%s v%s already holds this file (run %s); completing it", name, existing.version,
                 existing.run_id)
        run_id = existing.run_id
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{stage}-{cfg.name}") as run:
        _opened.add(run.info.run_id)
        if run_id is None:
            mlflow.log_params(loggable_params(params, stage))
            for h in history or []:
                for key in ("loss", "lr", "val_psnr_y"):
                    if key in h and h[key] == h[key]:
                        mlflow.log_metric(f"train_{key}", float(h[key]), step=int(h["step"]))
        mlflow.log_metrics(metrics)
        mlflow.set_tags({**stage_lineage(params, stage), "model_path": str(model_path), DIGEST_TAG: digest})
        dataset = params.eval.datasets[0]
        mlflow.log_image(comparison_grid(_crop_rows(model, teacher_path, dataset, model.scale)),
                         "comparison_bicubic_teacher_student_hr.png")
        version = existing.version if existing is not None else None
        if register and existing is None:
            version = log_model_version(local_path, name)
        if register:
            mlflow.set_tags(log_onnx(model))
        run_id = run.info.run_id
    _opened.discard(run_id)
    policy = policy or PromotionPolicy()
    if not policy.compare:  # compare on every configured benchmark, not only the gate's
        policy = replace(policy, compare=tuple(f"{d}_psnr_y" for d in params.eval.datasets))
    if register:
        _pause_point()
    decision = promote(client, name, version, policy) if register else None
    return {"run_id": run_id, "registered_model": name, "version": version,
            "promoted": decision.promoted if decision else None,
            "reason": decision.reason if decision else None, "tracking_uri": mlflow.get_tracking_uri()}
