"""Checks that a training stage can run, made on the driver before Ray starts.

Each check turns a failure that would otherwise surface minutes later inside a Ray worker (and be
retried for nothing) into a one-line ``SrcoreError`` naming the parameter and what to do: unknown
model or overrides, missing shards, a patch larger than the stored sub-images, a batch larger
than a rank's share of the patches, more CPUs per rank than the machine or cluster has, a missing
teacher or one of another scale. Single-field rules (gamma, milestones) live in ``srcore.config``.
"""

from __future__ import annotations

import logging
import os

from srcore.config import DistillParams, Params, Stage, TrainParams, stage_section
from srcore.data.loaders import shard_set
from srcore.data.patch_source import PatchSource, patch_source
from srcore.data.shards import MANIFEST
from srcore.errors import ConfigError
from srcore.models.presets import config_for
from srcore.storage import join

log = logging.getLogger(__name__)

__all__ = ["check_cluster_fits", "check_training_inputs", "training_source"]


def training_source(params: Params) -> PatchSource:
    """Where this run's training reads its patches (``prepare.out`` through ``loader.source``)."""
    return patch_source(params.prepare.out, params.loader.source)


def _check_patches(params: Params, cfg: TrainParams, stage: Stage, source: PatchSource) -> None:
    """Patch size against the stored sub-images, batch size against each rank's share of them."""
    manifest = source.manifest()
    if manifest is None:
        log.debug("no %s in %s: patch and batch sizes checked by the loader", MANIFEST, source.shown)
        return
    where = join(source.shown, MANIFEST)
    crop = int((manifest.get("params") or {}).get("crop_size", 0))
    lr_side = crop // cfg.scale
    patch = params.loader.patch_size
    if crop and patch > lr_side:
        raise ConfigError(f"loader.patch_size {patch} is larger than the x{cfg.scale} LR sub-images in "
                          f"{where} ({crop} // {cfg.scale} = {lr_side} px); set loader.patch_size to at most "
                          f"{lr_side} or prepare again with a larger prepare.crop_size")
    rows = int(((manifest.get("scales") or {}).get(str(cfg.scale)) or {}).get("rows", -1))
    ranks, batch = cfg.ray.num_workers, params.loader.batch_size
    if rows >= 0 and rows // ranks < batch:
        raise ConfigError(f"loader.batch_size {batch} is more than each of the {ranks} ranks "
                          f"({stage_section(stage)}.ray.num_workers) gets: {where} lists {rows} x{cfg.scale} "
                          "patches; lower loader.batch_size or prepare more data")


def _local_cpus() -> float:
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0))
    return float(os.cpu_count() or 1)


def check_cluster_fits(cfg: TrainParams, stage: Stage, node_cpus: list[float], where: str,
                       ray_data: bool = False) -> None:
    """Every rank must fit on one node, and all ranks on the cluster, or Ray waits for ever. With
    ``ray_data`` (``loader.backend: ray_data``) a CPU must stay free of ranks: Ray Data's read tasks
    run there, and with none they wait for ever without a word."""
    need, ranks = cfg.ray.cpus_per_worker, cfg.ray.num_workers
    key = f"{stage_section(stage)}.ray.cpus_per_worker"
    if node_cpus and need > max(node_cpus):
        raise ConfigError(f"{key} {need:g} is more than the {max(node_cpus):g} CPUs of the largest node of "
                          f"{where}; lower {key}")
    if node_cpus and need * ranks > sum(node_cpus):
        raise ConfigError(f"{ranks} ranks x {key} {need:g} = {need * ranks:g} CPUs, but {where} has "
                          f"{sum(node_cpus):g}; lower {stage_section(stage)}.ray.num_workers or {key}")
    if ray_data and node_cpus and sum(node_cpus) - need * ranks < 1:
        raise ConfigError(f"loader.backend ray_data reads on CPUs the training ranks leave free, and {ranks} "
                          f"ranks x {key} {need:g} take all {sum(node_cpus):g} CPUs of {where}; lower {key} "
                          f"(or {stage_section(stage)}.ray.num_workers) to leave at least one, or use "
                          "loader.backend: torch")


def check_training_inputs(params: Params, stage: Stage, address: str | None = None) -> TrainParams:
    """Refuse, before anything starts, a stage that cannot train; returns the stage's params."""
    cfg = params.stage(stage)
    config_for(cfg.model, cfg.scale, **cfg.model_overrides)  # unknown model / bad overrides fail here
    if cfg.init:
        from srcore.models import build
        from srcore.models.loading import init_weights

        # wrong architecture, scale or width, truncated or missing file: fail here, not in a worker
        init_weights(build(cfg.model, cfg.scale, **cfg.model_overrides), cfg.init, cfg.model)
    source = training_source(params)
    shard_set(source, cfg.scale)
    _check_patches(params, cfg, stage, source)
    if not address:
        check_cluster_fits(cfg, stage, [_local_cpus()], "this machine",
                           ray_data=params.loader.backend == "ray_data")
    if isinstance(cfg, DistillParams) and cfg.distills:
        from srcore.models.loading import load_teacher

        load_teacher(cfg.teacher, cfg.scale, cfg.teacher_model)  # missing teacher / scale mismatch fail here
    return cfg
