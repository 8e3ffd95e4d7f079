"""The training loop run by every Ray Train worker, for teacher training and distillation alike.

Adam with the papers' settings and MultiStep halving at fixed fractions of the run, optional
gradient clipping, an EMA of the weights (validated and exported), bf16 autocast on CUDA,
optional ``torch.compile`` and channels-last. Validation (PSNR-Y with the project's metric on
the held-out set) and checkpoints happen every ``val_every`` steps and at the end; a checkpoint
holds everything needed to continue at the same step with the same learning rate.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from srcore.config import DistillParams, LoaderParams, TrainParams
from srcore.data.loaders import ShardPairs, shard_files
from srcore.evaluation import evaluate_dataset
from srcore.models import build, save_model
from srcore.models.base import SRModel
from srcore.train.losses import DistillationLoss, reconstruction_loss
from srcore.train.state import load_with_fallback, restore_rng, rng_state, write_state

log = logging.getLogger(__name__)

__all__ = ["train_loop_per_worker", "milestone_steps"]


def milestone_steps(steps: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({max(1, int(round(f * steps))) for f in fractions})


class _Trainable(nn.Module):
    """The student (or teacher being trained) plus training-only distillation adapters."""

    def __init__(self, model: SRModel, distill: DistillationLoss | None) -> None:
        super().__init__()
        self.model = model
        self.distill = distill

    def forward(self, lr: torch.Tensor):
        feats = self.model.forward_features(lr)
        return self.model.reconstruct(feats, lr), feats


def _build_student(cfg: TrainParams) -> SRModel:
    return build(cfg.model, cfg.scale, **cfg.model_overrides)


def _teacher(cfg: DistillParams, device: torch.device) -> SRModel:
    from srcore.train.teacher import load_teacher

    teacher = load_teacher(cfg.teacher, cfg.scale, cfg.teacher_model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _validate(model: SRModel, cfg: TrainParams, device: torch.device) -> float:
    return evaluate_dataset(model, cfg.val_dataset, cfg.scale, device=device).psnr_y


def _batches(config: dict, cfg: TrainParams, lcfg: LoaderParams, rank: int, world: int
             ) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """One epoch of (lr, hr) batches for this rank, from the configured loader back-end; every
    rank gets the same number of batches."""
    if lcfg.backend == "ray_data":
        import ray.train

        shard = ray.train.get_dataset_shard("train")

        def ray_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            n = 0
            for batch in shard.iter_torch_batches(batch_size=lcfg.batch_size, drop_last=True,
                                                  local_shuffle_buffer_size=lcfg.shuffle_buffer):
                n += 1
                yield batch["lr"], batch["hr"]
            if n == 0:
                raise RuntimeError(f"rank {rank} got no full batch of {lcfg.batch_size} in epoch {epoch}; "
                                   "prepare more data or lower loader.batch_size")

        return ray_epoch
    dataset = ShardPairs(shard_files(config["shards"], cfg.scale), cfg.scale, lcfg.patch_size, rank, world,
                         seed=lcfg.seed, shuffle_buffer=lcfg.shuffle_buffer)
    loader = DataLoader(dataset, batch_size=lcfg.batch_size, num_workers=lcfg.num_workers, drop_last=True)

    def torch_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset.set_epoch(epoch)
        if len(dataset) < lcfg.batch_size:
            raise RuntimeError(f"each of the {world} ranks gets {len(dataset)} samples per epoch, fewer than one "
                               f"batch of {lcfg.batch_size}; prepare more data or lower loader.batch_size")
        yield from loader

    return torch_epoch


def _limit_threads(cpus: float) -> None:
    """Keep a CPU rank to the cores Ray reserved for it: torch and the numba scan kernels would
    otherwise each start one thread per core of the host, and ranks sharing a host oversubscribe."""
    import numba

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"stage": "teacher"|"distill", "train": dict, "loader": dict,
    "shards": folder, "cwd": folder to resolve relative paths against}."""
    import ray.train
    import ray.train.torch

    os.chdir(config["cwd"])
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # worker process: progress lines to the driver
    distill = config["stage"] == "distill"
    cfg: TrainParams = (DistillParams if distill else TrainParams)(**config["train"])
    lcfg = LoaderParams(**config["loader"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        _limit_threads(cfg.ray.cpus_per_worker)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    model = _build_student(cfg).to(device)
    teacher = _teacher(cfg, device) if distill else None
    loss_terms = None
    if distill:
        probe = torch.rand(1, 3, lcfg.patch_size, lcfg.patch_size, device=device)
        with torch.no_grad():
            loss_terms = DistillationLoss(model.forward_features(probe), teacher.forward_features(probe),
                                          cfg.w_out, cfg.w_feat, cfg.w_depth, cfg.depth_weights,
                                          cfg.depth_map).to(device)
    trainable = _Trainable(model, loss_terms)
    if cfg.channels_last:
        trainable = trainable.to(memory_format=torch.channels_last)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    optimizer = torch.optim.Adam(trainable.parameters(), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestone_steps(cfg.steps, cfg.milestones), cfg.gamma)

    step, epoch, history, resumed_from = 0, 0, [], None
    state = load_with_fallback(ray.train.get_checkpoint())
    if state is not None:
        trainable.load_state_dict(state["trainable"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, history = state["step"], state["epoch"] + 1, list(state.get("history", []))
        resumed_from = step
        restore_rng(state["rng"][min(rank, len(state["rng"]) - 1)])
        log.info("rank %d resumed at step %d (lr %.3g)", rank, step, scheduler.get_last_lr()[0])

    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    ddp = ray.train.torch.prepare_model(trainable, parallel_strategy_kwargs={"find_unused_parameters": False}) \
        if world > 1 else trainable
    runner = torch.compile(ddp) if cfg.compile else ddp
    batches = _batches(config, cfg, lcfg, rank, world)
    use_amp = cfg.amp and device.type == "cuda"
    marker = Path(config["run_dir"]) / ".failed_once"
    # Recent losses stay on the device; reading them (a host sync) happens only at report time.
    window: deque[torch.Tensor] = deque(maxlen=50)
    t0, samples = time.perf_counter(), 0

    def report() -> None:
        metrics: dict[str, Any] = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                   "loss": torch.stack(list(window)).mean().item() if window else math.nan,
                                   "samples_per_s": samples * world / max(1e-9, time.perf_counter() - t0)}
        export = ema.module if ema is not None else model
        if rank == 0:
            metrics["val_psnr_y"] = _validate(export, cfg, device)
            history.append({k: metrics[k] for k in ("step", "loss", "lr", "val_psnr_y")})
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                write_state(folder, {"trainable": trainable.state_dict(),
                                     "ema": ema.state_dict() if ema is not None else None,
                                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                     "step": step, "epoch": epoch, "rng": [rng_state()], "config": config,
                                     "history": history, "nodes": nodes, "resumed_from": resumed_from})
                save_model(Path(folder) / "model.pth", export, cfg.model, extra={"step": step, "stage": config["stage"]})
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)
        log.info("step %d loss %.4f lr %.3g %s", step, metrics["loss"], metrics["lr"],
                 f"val PSNR-Y {metrics['val_psnr_y']:.2f}" if "val_psnr_y" in metrics else "")

    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    for epoch in count(epoch):
        if step >= stop:
            break
        trainable.train()
        for lr_img, hr_img in batches(epoch):
            lr_img, hr_img = lr_img.to(device), hr_img.to(device)
            if cfg.channels_last:
                lr_img = lr_img.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                sr, feats = runner(lr_img)
                loss = reconstruction_loss(sr.float(), hr_img, cfg.loss) * (cfg.w_rec if distill else 1.0)
                if distill:
                    with torch.no_grad():
                        t_feats = teacher.forward_features(lr_img)
                        t_sr = teacher.reconstruct(t_feats, lr_img)
                    for term in loss_terms(sr, feats, t_sr, t_feats).values():
                        loss = loss + term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            samples += lr_img.shape[0]
            window.append(loss.detach())
            if cfg.fail_once_at_step == step and rank == 0 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                raise RuntimeError(f"injected failure at step {step} (fail_once_at_step)")
            if step % cfg.val_every == 0 or step == stop:
                report()
            if step >= stop:
                break
