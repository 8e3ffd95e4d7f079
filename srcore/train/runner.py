"""Launching a training stage on Ray Train (local Ray by default, or an existing cluster).

``run_stage`` checks the inputs on the driver first (``srcore.train.preflight``), so a bad
parameter fails in a second with a one-line error instead of inside a Ray worker. While the stage
runs, Ray's own log stream (worker output, controller warnings, tracebacks of retried failures)
goes to ``<run folder>/ray.log`` instead of the terminal (``quiet_ray=False`` keeps Ray's default;
a run folder in an object store gets the file when the stage ends),
and rank 0's progress (step, loss, samples/s, validation PSNR) reaches ``on_progress`` on the
driver. Errors the user must fix, raised inside a worker, come back as the same one-line error
and are not retried. A SIGTERM or SIGINT while it trains stops every rank after the same step
with a checkpoint of it (``srcore.train.stop``), and ``run_stage`` raises ``TrainingInterrupted``;
rerunning the name resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from srcore import errors
from srcore.config import RUN_ONLY_FIELDS, Params, TrainParams
from srcore.data.benchmarks import default_cache_dir
from srcore.data.loaders import ray_dataset, shard_set
from srcore.errors import CheckpointUploadFailed, SrcoreError
from srcore.raycluster import ensure_ray
from srcore.storage import copy_file, endpoint_env, file_exists, filesystem, is_uri, read_bytes, write_bytes
from srcore.train import faults
from srcore.train.channel import new_channel
from srcore.train.preflight import check_cluster_fits, check_training_inputs, training_source
from srcore.train.state import read_state
from srcore.train.stop import StopOnSignal, TrainingInterrupted
from srcore.train.uploads import local_run_folder

log = logging.getLogger(__name__)

__all__ = ["StageResult", "TrainingFailed", "ensure_ray", "preflight", "run_stage", "storage_root"]

ProgressCallback = Callable[[dict[str, Any]], None]
RAY_LOG = "ray.log"
_ADDRESS_SETTING = "teacher.ray.address / --address"


class TrainingFailed(SrcoreError):
    """Training stopped on an error Ray could not recover from within ``ray.max_failures``."""


@dataclass
class StageResult:
    name: str
    run_dir: str
    model_path: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def storage_root(cfg: TrainParams) -> str:
    """Absolute local path or object-store URI where Ray keeps this run."""
    path = cfg.ray.storage_path
    return path if is_uri(path) else str(Path(path).resolve())


@contextmanager
def _ray_loggers_to(sink: TextIO) -> Iterator[None]:
    """The driver-side ``ray`` loggers (start-up, Train controller, Data) write to ``sink``."""
    ray_logger = logging.getLogger("ray")
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = ray_logger.handlers[:], ray_logger.propagate
    ray_logger.handlers, ray_logger.propagate = [handler], False
    try:
        yield
    finally:
        ray_logger.handlers, ray_logger.propagate = saved


@contextmanager
def _worker_lines_to(sink: TextIO) -> Iterator[None]:
    """Lines Ray forwards from workers and actors (controller warnings, tracebacks of retried
    failures) go to ``sink``. Ray prints them through a dispatcher of named handlers, filled by
    ``ray.init``; swapping those handlers is the one way to keep the lines without printing them."""
    from ray._private import worker as ray_worker

    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if dispatcher is None:  # a Ray without the dispatcher: its default printing stays
        yield
        return

    def to_file(data: dict[str, Any]) -> None:
        if data.get("pid") == "autoscaler":  # periodic cluster status, kept in Ray's own monitor log
            return
        source = data.get("actor_name") or data.get("task_name") or "worker"
        sink.writelines(f"({source} pid={data.get('pid')}) {line}\n" for line in data.get("lines", []))

    # The cluster's error messages (a node's raylet dying, with the last 20 lines of its log) skip the
    # dispatcher: Ray's listener thread calls the module's print function, so that one is swapped too.
    printer = getattr(ray_worker, "print_to_stdstream", None)

    def errors_to_file(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        if data.get("pid") == "raylet":
            sink.writelines(f"(raylet) {line}\n" for line in data.get("lines", []))
        elif printer is not None:
            printer(data, ignore_prefix=ignore_prefix)

    previous = list(dispatcher.handlers)
    for name, _ in previous:
        dispatcher.remove_handler(name)
    dispatcher.add_handler("srcore_ray_log", to_file)
    if printer is not None:
        ray_worker.print_to_stdstream = errors_to_file
    try:
        yield
    finally:
        dispatcher.remove_handler("srcore_ray_log")
        for name, handler in previous:
            dispatcher.add_handler(name, _without_stage_leftovers(handler))
        if printer is not None:
            ray_worker.print_to_stdstream = printer


# Actors of a Ray Train run that may still speak after the stage has ended (a stopped or aborted run's
# placement-group cleaner polling a controller that is gone): their lines belong in the run's log,
# which is closed by then, not on the console (Ray's session logs keep them).
_STAGE_ACTORS = ("PlacementGroupCleaner",)


def _without_stage_leftovers(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def forward(data: dict[str, Any]) -> None:
        if str(data.get("actor_name") or "").startswith(_STAGE_ACTORS):
            return
        handler(data)

    return forward


@contextmanager
def _ray_log_in(run_dir: str, spool: Path) -> Iterator[tuple[Path, str]]:
    """The local file Ray's lines are written to during the stage, and where they end up.

    A local run folder holds ``ray.log`` itself. An object store has no append, so for a run folder
    there the lines go to ``spool`` (a file of this machine's folder for the run) and are added to
    ``<run_dir>/ray.log`` when the stage ends, failed or not; while the store cannot be reached they
    stay in the spool, which the next stage of the run continues; an existing log that cannot be
    read is left as it is and the spool kept beside it.
    """
    if not is_uri(run_dir):
        path = Path(run_dir) / RAY_LOG
        yield path, str(path)
        return
    target = f"{run_dir}/{RAY_LOG}"
    spool.parent.mkdir(parents=True, exist_ok=True)
    if not spool.exists():
        try:
            copy_file(target, spool)  # the lines of the run's earlier stages, appended to below
        except FileNotFoundError:
            pass
        except OSError as exc:
            target = f"{run_dir}/ray-{time.strftime('%Y%m%d-%H%M%S')}.log"
            log.warning("could not read %s/%s (%s); this stage's Ray log goes to %s", run_dir, RAY_LOG,
                        exc, target)
    try:
        yield spool, target
    finally:
        try:
            copy_file(spool, target)
            spool.unlink()
        except OSError as exc:
            log.warning("could not write Ray's log to %s (%s); it stays on this machine at %s", target, exc,
                        spool)


@contextmanager
def _ray_output(run_dir: str, spool: Path, address: str | None, quiet: bool) -> Iterator[str | None]:
    """Ray started or connected for the block; with ``quiet`` its output is kept in the run's
    ``ray.log`` (appended) instead of the terminal, and where that is, is yielded (``None``: Ray
    prints as it does by default). Ray's session logs (``/tmp/ray/session_latest/logs``) keep
    everything as well."""
    if not quiet:
        ensure_ray(address, setting=_ADDRESS_SETTING)
        yield None
        return
    with _ray_log_in(run_dir, spool) as (local, where):
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "a", buffering=1) as sink, _ray_loggers_to(sink):
            # every Ray line goes to the file, INFO included
            ensure_ray(address, setting=_ADDRESS_SETTING, logging_level=logging.INFO)
            with _worker_lines_to(sink):
                yield where


class _DriverChannel:
    """The stage's channel actor (``srcore.train.channel``), which the ranks fill (rank 0's progress,
    any rank's user error) and a driver thread drains: progress goes to ``on_progress``, the first
    user error is kept for ``raise_fatal``. The same actor holds the driver's stop request."""

    def __init__(self, on_progress: ProgressCallback | None, name: str = "run",
                 max_failures: int = 0) -> None:
        self.actor = new_channel()
        self.on_progress = on_progress
        self.fatal: dict[str, Any] | None = None
        self.name, self.max_failures = name, max_failures
        self.starts = 0  # the ranks' starts in this call: a second one is Ray restarting them after a failure
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="srcore-progress", daemon=True)

    def _handle(self, event: dict[str, Any]) -> None:
        from srcore.train.loop import FATAL_KEY, WARNING_KEY

        if FATAL_KEY in event:
            self.fatal = self.fatal or event
        elif event.get("kind") == "start":
            self.starts += 1
            if self.starts > 1:
                self._restarted(event.get("resumed_from"))
        elif WARNING_KEY in event:
            log.warning("%s", event[WARNING_KEY])
        elif self.on_progress is not None:
            try:
                self.on_progress(event)
            except Exception:  # the display must never take the run down
                log.debug("progress display failed", exc_info=True)

    def _restarted(self, step: int | None) -> None:
        """One line when Ray Train starts the ranks again (a rank, or the node it ran on, was lost)."""
        where = f"its checkpoint of step {step}" if step else "the start (no checkpoint yet)"
        retries = "unlimited" if self.max_failures < 0 else str(self.max_failures)
        log.warning("%s: a worker or its node was lost; training goes on from %s (restart %d of %s "
                    "allowed by ray.max_failures; details in the run's %s)", self.name, where,
                    self.starts - 1, retries, RAY_LOG)

    def _take(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.actor.take.remote(), timeout=30)

    def _pump(self) -> None:
        from ray.exceptions import RayActorError, RayError

        while not self._done.is_set():
            try:
                events = self._take()
            except RayActorError:  # the actor is gone (the run was aborted): nothing more will come
                log.debug("progress channel lost", exc_info=True)
                return
            except RayError:  # passing trouble (a node of the cluster dying meanwhile): ask again
                log.debug("progress channel did not answer", exc_info=True)
                events = []
            for event in events:
                self._handle(event)
            if not events:
                self._done.wait(0.25)

    def __enter__(self) -> _DriverChannel:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import ray
        from ray.exceptions import RayError

        self._done.set()
        self._thread.join(timeout=5)
        try:
            while events := self._take():
                for event in events:
                    self._handle(event)
        except RayError:  # the actor is gone (the run was aborted): its last events with it
            log.debug("progress channel lost", exc_info=True)
        ray.kill(self.actor)

    def raise_fatal(self) -> None:
        """A worker's one-line user error (see ``loop.FATAL_KEY``), raised again on the driver."""
        from srcore.train.loop import FATAL_KEY

        if self.fatal is None:
            return
        kind = getattr(errors, str(self.fatal.get("fatal_type")), SrcoreError)
        if not (isinstance(kind, type) and issubclass(kind, SrcoreError)):
            kind = SrcoreError
        raise kind(self.fatal[FATAL_KEY])


def _trainer(params: Params, stage: str, cfg: TrainParams, storage: str, run_dir: str, channel: Any,
             stop: StopOnSignal):
    import ray.train
    from ray.train.torch import TorchTrainer

    from srcore.train.loop import train_loop_per_worker

    class StoppableTrainer(TorchTrainer):
        """Ray Train's own SIGINT handler (set in ``fit``, aborting the run at once) gives way to the
        clean stop of ``srcore.train.stop``, which gets the controller to abort on a second signal."""

        def _register_sigint_handler(self, controller: Any) -> None:
            stop.install(controller)

        def _create_default_callbacks(self) -> list:
            # Without datasets, Ray Data's callback only starts an actor (a process importing Ray Data)
            # that serves no shard: one process fewer a stage on the torch back-end.
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            try:
                from ray.train.v2._internal.callbacks import DatasetsCallback
            except ImportError:  # another Ray layout: keep its callbacks as they are
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

    source = training_source(params)
    datasets, per_epoch = None, None
    if params.loader.backend == "ray_data":
        shards = shard_set(source, cfg.scale)
        per_epoch = sum(shards.rows) // cfg.ray.num_workers // params.loader.batch_size
        epochs = math.ceil(cfg.steps / max(1, per_epoch)) + 1  # one streaming execution for the run
        datasets = {"train": ray_dataset(shards, cfg.scale, params.loader.patch_size,
                                         batch_size=params.loader.batch_size, epochs=epochs,
                                         seed=params.loader.seed)}
    # An object store is handed to Ray as a file system built here, with this process's endpoint, and
    # the endpoint travels with the workers (their checkpoint uploads and S3 reads): the nodes of a
    # cluster need only their credentials.
    storage_fs, storage_path = filesystem(storage) if is_uri(storage) else (None, storage)
    env = endpoint_env()
    return StoppableTrainer(
        train_loop_per_worker, datasets=datasets,
        train_loop_config={"stage": stage, "train": cfg.model_dump(mode="json"),
                           "loader": params.loader.model_dump(mode="json"),
                           "shards": source.as_config(), "batches_per_epoch": per_epoch, "cwd": os.getcwd(),
                           "run_dir": run_dir, "faults": faults.from_env().as_dict(), "channel": channel},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
            placement_strategy=cfg.ray.placement_strategy,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                  **({"GPU": cfg.ray.gpus_per_worker or 1} if cfg.ray.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
            worker_runtime_env={"env_vars": env} if env else None,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.ray.num_to_keep, checkpoint_score_attribute=cfg.ray.score_attribute,
                checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures)),
    )


def _cluster_cpus() -> list[float]:
    import ray

    return [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def preflight(params: Params, stage: str, address: str | None = None, name: str | None = None) -> TrainParams:
    """The stage's parameters (run named ``name`` when given), checked on the driver before anything
    starts (``srcore.train.preflight``): a refused stage leaves nothing behind, not even a tracking run."""
    cfg = check_training_inputs(params, stage, address or params.stage(stage).ray.address)
    return cfg.model_copy(update={"name": name}) if name else cfg


def run_stage(params: Params, stage: str, address: str | None = None, name: str | None = None,
              on_progress: ProgressCallback | None = None, quiet_ray: bool = True,
              checked: TrainParams | None = None) -> StageResult:
    """Train ``stage`` ("teacher" or "distill") with Ray Train and export the EMA model.

    Re-running with the same run name continues from the run's latest checkpoint. ``checked`` is
    what :func:`preflight` returned for these arguments, when the caller ran it already.
    """
    address = address or params.stage(stage).ray.address
    cfg = checked or preflight(params, stage, address, name)
    storage = storage_root(cfg)
    run_dir = f"{storage.rstrip('/')}/{cfg.name}"
    config_digest = _digest(stage, cfg, params)
    done = _finished(run_dir, config_digest, cfg.steps)
    if done is not None:
        log.info("%s already trained to step %s with these parameters; not training again",
                 cfg.name, cfg.steps)
        return done
    import ray.train

    spool = local_run_folder(default_cache_dir(), run_dir, cfg.name) / RAY_LOG
    with _ray_output(run_dir, spool, address, quiet_ray) as ray_log:
        if address:
            check_cluster_fits(cfg, stage, _cluster_cpus(), f"the Ray cluster at {address}",
                               ray_data=params.loader.backend == "ray_data")
        with _DriverChannel(on_progress, cfg.name, cfg.ray.max_failures) as channel, \
                StopOnSignal(channel.actor, cfg.stop_grace_s, cfg.name) as stop:
            try:
                result = _trainer(params, stage, cfg, storage, run_dir, channel.actor, stop).fit()
            except ray.exceptions.RayError:
                stop.raise_if_aborted()
                raise
            except ray.train.TrainingFailedError as exc:
                stop.raise_if_aborted()
                where = f"; details in {ray_log}" if ray_log else ""
                if ray_log and is_uri(run_dir):
                    where += f" (a copy on this machine until the store has it: {spool})"
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TrainingFailed(f"{cfg.name}: training failed after {cfg.ray.max_failures} "
                                     f"retries: {first}{where}") from None
    stop.raise_if_aborted()
    try:
        channel.raise_fatal()
    except CheckpointUploadFailed as exc:  # the store is down: say where Ray's log is kept meanwhile
        raise CheckpointUploadFailed(f"{exc}; Ray's log, until the store has it: {spool}") from None
    if result.checkpoint is None and stop.signum is not None:
        name = signal.Signals(stop.signum).name
        raise TrainingInterrupted(f"{cfg.name}: stopped by {name} before its first step; nothing to save, "
                                  "run the same command again to start it", stop.signum)
    if result.checkpoint is None:
        raise TrainingFailed(f"run {cfg.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = read_state(folder)
        if stop.signum is not None and state.get("step") != cfg.steps:
            raise TrainingInterrupted(
                f"{cfg.name}: stopped by {signal.Signals(stop.signum).name} at step {state.get('step')} of "
                f"{cfg.steps}, checkpoint saved in {run_dir}; run the same command again (run name "
                f"{cfg.name}) to resume from it", stop.signum)
        model_path = f"{run_dir}/model.pth"
        copy_file(Path(folder) / "model.pth", model_path)
    history = list(state.get("history", []))
    metrics = dict(result.metrics or {}) or (history[-1] if history else {})
    log.info("%s finished at step %s -> %s", cfg.name, state.get("step"), model_path)
    out = StageResult(cfg.name, run_dir, model_path, {**metrics, "step": state.get("step")}, history)
    record = {**asdict(out), "config_digest": config_digest}
    try:
        write_bytes(f"{run_dir}/{_RESULT}", json.dumps(record, default=str).encode())
    except OSError as exc:  # the model is safe; only the shortcut for an identical re-run is lost
        log.warning("could not record %s's result in %s (%s); an identical re-run will train again",
                    cfg.name, run_dir, exc)
    return out


_RESULT = "result.json"


def _digest(stage: str, cfg: TrainParams, params: Params) -> str:
    exclude = set(RUN_ONLY_FIELDS)
    payload = {"stage": stage, "train": cfg.model_dump(mode="json", exclude=exclude),
               "loader": params.loader.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _finished(run_dir: str, config_digest: str, steps: int) -> StageResult | None:
    """The recorded result of a completed run with the same parameters, if any."""
    try:
        record = json.loads(read_bytes(f"{run_dir}/{_RESULT}"))
    except (OSError, ValueError):  # none yet (or unreadable): train
        return None
    if record.get("config_digest") != config_digest or (record.get("metrics") or {}).get("step") != steps \
            or not file_exists(record.get("model_path") or ""):
        return None
    record.pop("config_digest")
    return StageResult(**record)
