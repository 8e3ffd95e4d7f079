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

Training never waits on the tracking server: the points go through a bounded buffer
(``srcore.tracking.buffer``, ``SRCORE_TRACKING_BUFFER`` points, default 100000) that a background
thread sends, so an outage costs one line when it starts and one when the server answers again.
At the end of the stage the buffer gets ``SRCORE_TRACKING_TIMEOUT`` seconds to empty, the
system-metrics monitor ``MONITOR_STOP_S`` seconds to stop, and the run's last requests (its tags
and status) one try of at most ``END_REQUEST_S`` seconds each: a server still away costs a bounded
wait and a line for what it did not get, and the stage's result is returned all the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srcore.config import Params
from srcore.data.patch_source import PatchSource, patch_source
from srcore.errors import ConfigError
from srcore.servers import call_within
from srcore.tracking.buffer import Leftover, PointBuffer, Refused, quiet_thread, short_reason
from srcore.tracking.runs import (
    EXPERIMENT,
    bounded_requests,
    configure,
    loggable_params,
    run_url,
    stage_lineage,
    tracking_timeout,
)

log = logging.getLogger(__name__)

__all__ = ["StageRun", "buffer_capacity", "end_stage_run", "run_tracked_stage", "stage_run", "parent_run",
           "find_model_run", "log_patch_input"]

Event = dict[str, Any]
# Which keys of a rank-0 event become metrics, per event kind (see ``srcore.train.loop``).
_LOGGED = {"log": None, "validation": ("loss", "val_psnr_y")}
_NOT_METRICS = {"kind", "stage", "step", "steps", "epoch"}


BUFFER_ENV = "SRCORE_TRACKING_BUFFER"
SEND_TIMEOUT_S = 10.0  # one try of a batch; past it the server counts as unreachable
END_REQUEST_S = 10.0  # one try of each of the run's last requests
MONITOR_STOP_S = 2.0  # for the system-metrics monitor to stop and send its last sample
MONITOR_THREAD = "SystemMetricsMonitor"  # MLflow's name for its system-metrics thread
_LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


def buffer_capacity() -> int:
    """Points a stage run holds while the tracking server is away (``SRCORE_TRACKING_BUFFER``,
    default 100000: about 50 MB, hours of points at the usual ``log_every``)."""
    text = os.environ.get(BUFFER_ENV, "100000")
    try:
        value = int(text)
        if value < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{BUFFER_ENV} must be a positive number of points, got {text!r}") from None
    return value


def _batch_sender(client: Any, run_id: str) -> Callable[[list[Any]], None]:
    """How the sender thread logs a batch of metrics. To a server: one request of at most
    ``SEND_TIMEOUT_S`` (the buffer retries; MLflow's own retries would hold the batch for minutes
    of backoff and answer late once the server is back); a client error is :class:`Refused`. To a
    local store: through the client."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.rest_store import RestStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)  # as the client resolved it

    def refusal(exc: MlflowException) -> bool:
        return 400 <= exc.get_http_status_code() < 500 and exc.get_http_status_code() not in (408, 429)

    if not isinstance(store, RestStore):
        def log_batch(metrics: list[Any]) -> None:
            try:
                client.log_batch(run_id, metrics=metrics, synchronous=True)
            except MlflowException as exc:
                raise (Refused(str(exc)) if refusal(exc) else exc) from exc
        return log_batch

    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    def post(metrics: list[Any]) -> None:
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
        response = http_request(store.get_host_creds(), _LOG_BATCH, "POST", max_retries=0, backoff_factor=0,
                                timeout=SEND_TIMEOUT_S, json=body)
        try:
            verify_rest_response(response, _LOG_BATCH)
        except MlflowException as exc:
            raise (Refused(str(exc)) if refusal(exc) else exc) from exc
    return post


@dataclass
class StageRun:
    """The MLflow run of one training stage; ``on_event`` is the driver's progress callback.
    ``points`` counts the metric points logged; ``end_tags`` are set when the run ends."""

    client: Any
    run_id: str
    url: str
    buffer: PointBuffer
    points: int = 0
    end_tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, client: Any, run_id: str, url: str, where: str, capacity: int | None = None) -> StageRun:
        """A stage run whose points go to the server at ``where`` through a buffer of ``capacity``
        points (default :func:`buffer_capacity`) and its sender thread."""
        buffer = PointBuffer(_batch_sender(client, run_id), where, capacity or buffer_capacity(),
                             stall_s=SEND_TIMEOUT_S)
        return cls(client, run_id, url, buffer)

    def on_event(self, event: Event) -> None:
        """Hold a rank-0 event's metrics at its step for the sender (called from the driver's progress
        thread, right after the console's callback: it never waits on the server)."""
        from mlflow.entities import Metric

        keys = _LOGGED.get(event.get("kind"), ())
        if keys == ():
            return
        step, now = int(event.get("step", 0)), int(time.time() * 1000)
        names = keys or [k for k in event if k not in _NOT_METRICS]
        metrics = [Metric(f"train_{k}", float(event[k]), now, step) for k in names
                   if isinstance(event.get(k), int | float) and math.isfinite(event[k])]
        self.buffer.put(metrics)
        self.points += len(metrics)

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """The recorded validation history of a stage that did not train now (already complete)."""
        for h in history:
            self.on_event({"kind": "validation", **h})

    def close(self, wait_s: float) -> Leftover:
        """Send the points still held, waiting at most ``wait_s`` seconds; returns what was not delivered."""
        return self.buffer.close(wait_s)


def _start_system_metrics(run_id: str) -> Any:
    """MLflow's system-metrics monitor for the run, owned here rather than by ``mlflow.start_run``
    so that ending the run can bound the wait for it (MLflow joins its thread without a limit,
    and that thread may be in minutes of retries when the server is away). None if it cannot start."""
    # What its thread logs during an outage (urllib3's retries, then MLflow's "Failed to get mlflow
    # run: ..." when they run out, after which the monitor stops) says nothing the buffer's two
    # lines do not; the end of the run says when the server was still away.
    quiet_thread(MONITOR_THREAD)
    quiet_thread(MONITOR_THREAD, "mlflow.system_metrics.system_metrics_monitor")
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id)
        monitor.start()
    except Exception as exc:  # as MLflow does: the run goes on without system metrics
        log.warning("system metrics of run %s are not logged (%s)", run_id, exc)
        return None
    return monitor


def end_stage_run(run: StageRun, status: str, monitor: Any = None) -> None:
    """End the active MLflow run of ``run`` (``status``: FINISHED or FAILED) within a bounded time:
    its held points get ``SRCORE_TRACKING_TIMEOUT`` seconds, the system metrics ``MONITOR_STOP_S``,
    then the end tags and the status one try each of at most ``END_REQUEST_S``. The run always
    stops being the active run; what the server did not get costs one WARNING, never an exception."""
    wait = tracking_timeout()
    left = run.close(wait)
    missed, reason = _last_requests(run, status, monitor)
    if left.unsent:
        missed.insert(0, f"{left.unsent} points")
    dropped = f"{left.dropped} points dropped on the way (buffer full at {run.buffer.capacity})"
    if missed:
        also = f"; {dropped}" * bool(left.dropped)
        log.warning("MLflow run %s at %s lacks %s (%s)%s; the stage's result is kept", run.run_id,
                    run.buffer.where, ", ".join(missed), reason or f"no answer within {wait:g} s", also)
    elif left.dropped:
        log.warning("MLflow run %s at %s: %s", run.run_id, run.buffer.where, dropped)


def _last_requests(run: StageRun, status: str, monitor: Any) -> tuple[list[str], str]:
    """Stop the system metrics, set the end tags and the status, each bounded; returns what the
    server did not get and why (the first failure's root cause)."""
    import mlflow

    missed: list[str] = []
    reasons: list[str] = []
    with bounded_requests(END_REQUEST_S, retries=0):
        if monitor is not None:
            # finish() joins the monitor's thread (a second when it is well), which may be deep in
            # MLflow's own retries after an outage: its last sample is not worth more of a wait
            try:
                call_within(monitor.finish, MONITOR_STOP_S, MONITOR_THREAD)
            except TimeoutError:
                log.debug("system metrics of run %s did not stop within %g s", run.run_id, MONITOR_STOP_S)
        if run.end_tags:
            try:
                mlflow.set_tags(run.end_tags)
            except Exception as exc:
                missed.append(f"its tags {', '.join(run.end_tags)}")
                reasons.append(short_reason(exc))
        try:
            mlflow.end_run(status)  # leaves the active run first, then tells the server
        except Exception as exc:
            missed.append(f"its status {status}")
            reasons.append(short_reason(exc))
    return missed, (reasons or [""])[0]


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
    capacity = buffer_capacity()  # a wrong setting fails before a run is opened
    client = configure()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    source = patch_source(params.prepare.out, params.loader.source)  # resolved once for tags and input
    tags = stage_lineage(params, stage, source)
    if stage == "distill" and cfg.distills:
        teacher_run_id = teacher_run_id or find_model_run(client, experiment_id, cfg.teacher)
        if teacher_run_id:
            tags["teacher_run_id"] = teacher_run_id
    active = mlflow.start_run(run_name=f"{stage}-{name or cfg.name}", experiment_id=experiment_id,
                              parent_run_id=parent_run_id, tags=tags, log_system_metrics=False)
    run_id, uri = active.info.run_id, mlflow.get_tracking_uri()
    monitor = _start_system_metrics(run_id)
    run = StageRun.start(client, run_id, run_url(uri, experiment_id, run_id), uri, capacity)
    status = "FAILED"
    try:
        mlflow.log_params(loggable_params(params, stage))
        log_patch_input(source, cfg.scale)
        yield run
        status = "FINISHED"
    finally:
        end_stage_run(run, status, monitor)


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
            run.end_tags["reused_result"] = "true"
        run.end_tags.update(model_path=result.model_path, run_dir=result.run_dir)
    return result, run
