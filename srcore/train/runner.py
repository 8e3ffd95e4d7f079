"""Launching a training stage on Ray Train (local Ray by default, or an existing cluster)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srcore.config import DistillParams, Params, TrainParams
from srcore.io import atomic_output, atomic_write_bytes
from srcore.data.loaders import ray_dataset, shard_files
from srcore.errors import ConfigError
from srcore.models.registry import config_for
from srcore.train.state import read_state

log = logging.getLogger(__name__)

__all__ = ["StageResult", "run_stage", "ensure_ray", "storage_root"]


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
    return path if "://" in path else str(Path(path).resolve())


def _check_address(address: str) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} must look like HOST:PORT (e.g. 127.0.0.2:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                          "start it (ray start --head) or fix teacher.ray.address / --address") from None


def ensure_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` or start a local, loopback-only Ray (no-op when already connected)."""
    import ray

    if address:
        _check_address(address)  # also when already connected: a wrong address must not pass silently
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A single-node Ray binds to this host's external address unless told it is a lone node. The
    # flag is set for the start-up only: left in this process's environment it would mark any
    # cluster started later from here (``ray start`` subprocesses) as single-node too.
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(key)
    os.environ.setdefault(key, "0")
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    finally:
        if before is None:
            os.environ.pop(key, None)


def _validate(params: Params, stage: str) -> TrainParams:
    cfg: TrainParams = params.student if stage == "distill" else params.teacher
    config_for(cfg.model, cfg.scale, **cfg.model_overrides)  # unknown model / bad overrides fail here
    shard_files(params.prepare.out, cfg.scale)
    if stage == "distill":
        from srcore.train.teacher import load_teacher

        assert isinstance(cfg, DistillParams)
        load_teacher(cfg.teacher, cfg.scale, cfg.teacher_model)  # missing teacher / scale mismatch fail here
    return cfg


def run_stage(params: Params, stage: str, address: str | None = None, name: str | None = None) -> StageResult:
    """Train ``stage`` ("teacher" or "distill") with Ray Train and export the EMA model.

    Re-running with the same run name continues from the run's latest checkpoint.
    """
    if stage not in ("teacher", "distill"):
        raise ConfigError(f"unknown stage {stage!r}; use teacher or distill")
    cfg = _validate(params, stage)
    if name:
        cfg = cfg.model_copy(update={"name": name})
    address = address or cfg.ray.address
    import ray.train
    from ray.train.torch import TorchTrainer

    from srcore.train.loop import train_loop_per_worker

    storage = storage_root(cfg)
    run_dir = f"{storage.rstrip('/')}/{cfg.name}"
    config_digest = _digest(stage, cfg, params)
    done = _finished(run_dir, config_digest, cfg.steps)
    if done is not None:
        log.info("%s already trained to step %s with these parameters; not training again", cfg.name, cfg.steps)
        return done
    ensure_ray(address)
    datasets = None
    if params.loader.backend == "ray_data":
        datasets = {"train": ray_dataset(shard_files(params.prepare.out, cfg.scale), cfg.scale,
                                         params.loader.patch_size, batch_size=params.loader.batch_size)}
    trainer = TorchTrainer(
        train_loop_per_worker, datasets=datasets,
        train_loop_config={"stage": stage, "train": cfg.model_dump(mode="json"),
                           "loader": params.loader.model_dump(mode="json"),
                           "shards": str(Path(params.prepare.out).resolve()), "cwd": os.getcwd(), "run_dir": run_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                  **({"GPU": cfg.ray.gpus_per_worker or 1} if cfg.ray.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.ray.num_to_keep, checkpoint_score_attribute=cfg.ray.score_attribute,
                checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name} finished without a checkpoint")
    model_path = f"{run_dir}/model.pth"
    with result.checkpoint.as_directory() as folder:
        _publish(Path(folder) / "model.pth", model_path)
        state = read_state(folder)
    history = list(state.get("history", []))
    metrics = dict(result.metrics or {}) or (history[-1] if history else {})
    log.info("%s finished at step %s -> %s", cfg.name, state.get("step"), model_path)
    out = StageResult(cfg.name, run_dir, model_path, {**metrics, "step": state.get("step")}, history)
    if "://" not in run_dir:
        record = {**asdict(out), "config_digest": config_digest}
        atomic_write_bytes(Path(run_dir) / _RESULT, json.dumps(record, default=str).encode())
    return out


_RESULT = "result.json"


def _digest(stage: str, cfg: TrainParams, params: Params) -> str:
    payload = {"stage": stage, "train": cfg.model_dump(mode="json", exclude={"ray", "stop_at_step",
                                                                             "fail_once_at_step"}),
               "loader": params.loader.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _finished(run_dir: str, config_digest: str, steps: int) -> StageResult | None:
    """The recorded result of a completed run with the same parameters, if any."""
    path = Path(run_dir) / _RESULT
    if "://" in run_dir or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    if record.get("config_digest") != config_digest or (record.get("metrics") or {}).get("step") != steps \
            or not Path(record.get("model_path", "")).is_file():
        return None
    record.pop("config_digest")
    return StageResult(**record)


def _publish(src: Path, dest: str) -> None:
    """Copy the exported model next to the run's checkpoints (local path or object store)."""
    if "://" in dest:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(dest)
        with open(src, "rb") as fh, fs.open_output_stream(path) as out:
            out.write(fh.read())
        return
    with atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)
