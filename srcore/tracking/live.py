"""Live MLflow tracking of a training stage: one run per stage, fed by rank 0 while it trains.

``run_tracked_stage(params, stage, ...)`` runs the stage's preflight (a refused stage opens no
run), then opens an MLflow run ``<stage>-<name>`` (nested under ``parent_run_id`` when given; a
student's run carries its teacher's run id in the tag ``teacher_run_id``), logs the stage's
parameters, lineage and the patch manifest as its input dataset, turns on MLflow's system
metrics, then trains with ``srcore.train.runner.run_stage``.
Rank 0's points reach the run as they arrive: every ``log_every`` steps ``train_loss_rec``,
``train_loss_distill_<term>`` (weighted terms), ``train_lr``, ``train_samples_per_s`` and
``train_memory_peak_mb``; at every validation ``train_loss`` and ``train_val_psnr_y``. A stage
found already trained with the same parameters logs its recorded history instead. The run ends
FAILED when training fails, FINISHED otherwise, tagged with the exported model's path.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srcore.config import Params
from srcore.data.patch_source import PatchSource, patch_source
from srcore.tracking.runs import EXPERIMENT, configure, loggable_params, run_url, stage_lineage

log = logging.getLogger(__name__)

__all__ = ["StageRun", "run_tracked_stage", "stage_run", "parent_run", "find_model_run", "log_patch_input"]

Event = dict[str, Any]
# Which keys of a rank-0 event become metrics, per event kind (see ``srcore.train.loop``).
_LOGGED = {"log": None, "validation": ("loss", "val_psnr_y")}
_NOT_METRICS = {"kind", "stage", "step", "steps", "epoch"}


@dataclass
class StageRun:
    """The MLflow run of one training stage; ``on_event`` is the driver's progress callback."""

    client: Any
    run_id: str
    url: str
    points: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: Event) -> None:
        """Log a rank-0 event as metrics at its step (called from the driver's progress thread)."""
        from mlflow.entities import Metric

        keys = _LOGGED.get(event.get("kind"), ())
        if keys == ():
            return
        step, now = int(event.get("step", 0)), int(time.time() * 1000)
        names = keys or [k for k in event if k not in _NOT_METRICS]
        metrics = [Metric(f"train_{k}", float(event[k]), now, step) for k in names
                   if isinstance(event.get(k), int | float) and math.isfinite(event[k])]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            with self._lock:
                self.points += 1

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """The recorded validation history of a stage that did not train now (already complete)."""
        for h in history:
            self.on_event({"kind": "validation", **h})


def find_model_run(client, experiment_id: str, model: str) -> str | None:
    """The run that produced ``model`` (a checkpoint path, run folder, URI or models:/ URI), if tracked."""
    from mlflow.exceptions import MlflowException

    if model.startswith("models:/"):
        from srcore.tracking.registry import parse_model_uri

        name, alias, version = parse_model_uri(model)
        try:
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
        except MlflowException:
            return None
        return mv.run_id
    from srcore.storage import is_uri

    if not is_uri(model):
        path = Path(model).resolve()
        model = str(path / "model.pth" if path.is_dir() else path)
    runs = client.search_runs([experiment_id], filter_string=f"tags.model_path = '{model}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_patch_input(source: PatchSource, scale: int) -> None:
    """The patch manifest (DVC-tracked shards) as the active run's input dataset: its location (a
    folder, an ``s3://`` prefix or the DVC remote's pinned listing) and its sha256."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    data = source.manifest_bytes()
    if data is None:
        log.debug("no patch manifest in %s; no input dataset logged", source.shown)
        return
    with warnings.catch_warnings():
        # MLflow registers its local-artifact source twice (for "" and "file://"), so every local path
        # "can be interpreted in multiple ways" by two identical classes: a warning with nothing to act on
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted",
                                category=UserWarning)
        where = resolve_dataset_source(source.uri)
    digest = hashlib.sha256(data).hexdigest()[:16]
    mlflow.log_input(MetaDataset(where, name=f"patches-x{scale}", digest=digest), context="training")


@contextmanager
def stage_run(params: Params, stage: str, name: str | None = None, parent_run_id: str | None = None,
              teacher_run_id: str | None = None) -> Iterator[StageRun]:
    """An MLflow run for one training stage, open for the block (see the module docstring)."""
    import mlflow

    cfg = params.stage(stage)
    client = configure()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    source = patch_source(params.prepare.out, params.loader.source)  # resolved once for tags and input
    tags = stage_lineage(params, stage, source)
    if stage == "distill" and cfg.distills:
        teacher_run_id = teacher_run_id or find_model_run(client, experiment_id, cfg.teacher)
        if teacher_run_id:
            tags["teacher_run_id"] = teacher_run_id
    with mlflow.start_run(run_name=f"{stage}-{name or cfg.name}", experiment_id=experiment_id,
                          parent_run_id=parent_run_id, tags=tags, log_system_metrics=True) as run:
        mlflow.log_params(loggable_params(params, stage))
        log_patch_input(source, cfg.scale)
        run_id = run.info.run_id
        yield StageRun(client, run_id, run_url(mlflow.get_tracking_uri(), experiment_id, run_id))


@contextmanager
def parent_run(name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """A parent run (the retrain flow's) that stage runs nest under; yields its id. It is not made
    the active run, so tasks running in this thread can open their own runs freely."""
    from mlflow.entities import RunStatus

    client = configure()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    run = client.create_run(experiment.experiment_id, run_name=name, tags=tags or {})
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield run.info.run_id
        status = RunStatus.to_string(RunStatus.FINISHED)
    finally:
        client.set_terminated(run.info.run_id, status)


def run_tracked_stage(params: Params, stage: str, address: str | None = None, name: str | None = None,
                      on_progress: Callable[[Event], None] | None = None, quiet_ray: bool = True,
                      parent_run_id: str | None = None, teacher_run_id: str | None = None,
                      announce: Callable[[StageRun], None] | None = None):
    """Train ``stage`` with ``run_stage`` inside its MLflow run; returns (StageResult, StageRun).
    The preflight runs first: a stage it refuses opens no run. ``announce`` is called with the run
    before training starts (the CLI prints its URL)."""
    import mlflow

    from srcore.train.runner import preflight, run_stage

    checked = preflight(params, stage, address, name)
    with stage_run(params, stage, name, parent_run_id, teacher_run_id) as run:
        if announce is not None:
            announce(run)

        def both(event: Event) -> None:
            if on_progress is not None:
                on_progress(event)
            run.on_event(event)

        result = run_stage(params, stage, address=address, name=name, on_progress=both, quiet_ray=quiet_ray,
                           checked=checked)
        if run.points == 0:
            run.log_history(result.history)
            mlflow.set_tag("reused_result", "true")
        mlflow.set_tags({"model_path": result.model_path, "run_dir": result.run_dir})
    return result, run
