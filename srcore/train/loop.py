"""The training loop run by every Ray Train worker, for teacher training and distillation alike.

Named steps over one ``TrainState``: ``setup`` (config, seeds, models, optimiser, schedule),
``resume`` (from the run's newest readable checkpoint), ``train_step`` (one batch: ``compute_loss``,
backward, optimiser, schedule, EMA), ``validate`` (PSNR-Y on the held-out set), ``report`` (metrics
to Ray Train and the driver's progress display), ``log_point`` (every ``log_every`` steps, the loss
terms, learning rate, throughput and memory for live tracking) and ``save_checkpoint``. Changing
the loss touches ``compute_loss``; changing the optimiser or schedule touches ``make_optimizer``/
``make_schedule``.

Recipe: Adam with the papers' settings, MultiStep decay at fixed fractions of the run, optional
gradient clipping, an EMA of the weights (validated and exported), bf16 autocast on CUDA, optional
``torch.compile`` and channels-last. Validation and checkpoints happen every ``val_every`` steps
and at the end; checkpoints without validation every ``checkpoint_every_s`` seconds and when the
driver asks the run to stop (``srcore.train.stop``), after which every rank returns.

Resume is epoch-exact: a checkpoint records the epoch and how many batches of it were trained
(``position``); a resumed run re-enters that epoch and skips that many batches. With the torch
loader the epoch's stream is a pure function of (seed, epoch, rank, worker), so the resumed run
sees the very batches the uninterrupted run would have; with Ray Data it continues at the same
position with freshly drawn crops (Ray Data's order is not reproducible).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from srcore.config import RUN_ONLY_FIELDS, DistillParams, LoaderParams, TrainParams
from srcore.data.loaders import ShardPairs, shard_set
from srcore.errors import CheckpointUploadFailed, DataError, SrcoreError
from srcore.evaluation import evaluate_dataset
from srcore.models import build, save_model
from srcore.models.base import SRModel
from srcore.train.faults import FaultPlan
from srcore.train.losses import DistillationLoss, reconstruction_loss
from srcore.train.state import load_with_fallback, read_state, restore_rng, rng_state, write_state
from srcore.train.stop import Action, StepControl
from srcore.train.uploads import CheckpointUploads, local_run_folder

log = logging.getLogger(__name__)

__all__ = [
    "FATAL_KEY",
    "TrainState",
    "compute_loss",
    "log_point",
    "make_optimizer",
    "make_schedule",
    "milestone_steps",
    "train_in_process",
    "train_loop_per_worker",
]

# Event key under which a worker sends the driver an error the user must fix (bad data, bad
# config): the worker returns instead of raising, so Ray's FailureConfig does not retry it, and the
# driver raises it again as the one-line error it is.
FATAL_KEY = "fatal_error"
# Event key under which a worker sends the driver a warning for the console (a stalled data pipeline).
WARNING_KEY = "warning"

Batch = tuple[torch.Tensor, torch.Tensor]


def milestone_steps(steps: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({max(1, round(f * steps)) for f in fractions})


def make_optimizer(cfg: TrainParams, params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)


def make_schedule(cfg: TrainParams, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch: the learning rate is multiplied by ``gamma`` at each milestone."""
    milestones = milestone_steps(cfg.steps, cfg.milestones)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.gamma)


class _Trainable(nn.Module):
    """The student (or teacher being trained) plus training-only distillation adapters."""

    def __init__(self, model: SRModel, distill: DistillationLoss | None) -> None:
        super().__init__()
        self.model = model
        self.distill = distill

    def forward(self, lr: torch.Tensor):
        feats = self.model.forward_features(lr)
        return self.model.reconstruct(feats, lr), feats


@dataclass
class TrainState:
    """Everything one rank trains with and everything a checkpoint must bring back."""

    config: dict[str, Any]
    cfg: TrainParams
    lcfg: LoaderParams
    rank: int
    world: int
    device: torch.device
    model: SRModel
    trainable: _Trainable
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    teacher: SRModel | None
    faults: FaultPlan
    runner: nn.Module | None = None
    uploads: CheckpointUploads | None = None  # rank 0's checkpoints: local copies and their uploads
    batches: Callable[[int], Iterator[Batch]] | None = None
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of ``epoch`` already trained
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    nodes: list[str] = field(default_factory=list)
    # Recent losses stay on the device; reading them (a host sync) happens only at report time.
    window: deque = field(default_factory=lambda: deque(maxlen=50))
    samples: int = 0
    t0: float = field(default_factory=time.perf_counter)
    last_psnr: float = math.nan
    # Loss terms summed on the device since the last live point (read once per ``log_every`` steps).
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    term_steps: int = 0
    logged_at: tuple[float, int] = field(default_factory=lambda: (time.perf_counter(), 0))  # (time, samples)

    @property
    def distill(self) -> bool:
        return self.teacher is not None

    @property
    def export(self) -> SRModel:
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_step(self) -> int:
        return self.faults.last_step(self.cfg.steps)


def _limit_threads(cpus: float) -> None:
    """Keep a CPU rank to the cores Ray reserved for it: torch and the numba scan kernels would
    otherwise each start one thread per core of the host, and ranks sharing a host oversubscribe."""
    import numba

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _teacher(cfg: DistillParams, device: torch.device) -> SRModel:
    from srcore.models.loading import load_teacher

    teacher = load_teacher(cfg.teacher, cfg.scale, cfg.teacher_model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def setup(config: dict[str, Any], rank: int, world: int, device: torch.device) -> TrainState:
    """Decode the stage config, seed this rank, build models, optimiser and schedule."""
    distill = config["stage"] == "distill"
    cfg: TrainParams = (DistillParams if distill else TrainParams)(**config["train"])
    lcfg = LoaderParams(**config["loader"])
    if device.type == "cpu":
        _limit_threads(cfg.ray.cpus_per_worker)
    _seed(cfg.seed + rank)
    model = build(cfg.model, cfg.scale, **cfg.model_overrides)
    if cfg.init:
        from srcore.models.loading import init_weights

        layout = init_weights(model, cfg.init, cfg.model)
        log.info("rank %d starts from %s (%s layout)", rank, cfg.init, layout)
    model = model.to(device)
    teacher = _teacher(cfg, device) if distill and cfg.distills else None
    loss_terms = None
    if teacher is not None:
        probe = torch.rand(1, 3, lcfg.patch_size, lcfg.patch_size, device=device)
        with torch.no_grad():
            loss_terms = DistillationLoss(model.forward_features(probe), teacher.forward_features(probe),
                                          cfg.w_out, cfg.w_feat, cfg.w_depth, cfg.depth_weights,
                                          cfg.depth_map, cfg.feat_norm).to(device)
    trainable = _Trainable(model, loss_terms)
    if cfg.channels_last:
        trainable = trainable.to(memory_format=torch.channels_last)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    optimizer = make_optimizer(cfg, trainable.parameters())
    return TrainState(config=config, cfg=cfg, lcfg=lcfg, rank=rank, world=world, device=device, model=model,
                      trainable=trainable, ema=ema, optimizer=optimizer,
                      scheduler=make_schedule(cfg, optimizer),
                      teacher=teacher, faults=FaultPlan(**config.get("faults", {})))


def _uploads(config: dict[str, Any], cfg: TrainParams) -> CheckpointUploads:
    from srcore.data.benchmarks import default_cache_dir

    run_dir = config["run_dir"]
    local = local_run_folder(default_cache_dir(), run_dir, cfg.name) / "checkpoints"
    return CheckpointUploads(run_dir, local, cfg.ray.upload_retry_s,
                             on_warning=lambda text: _send(config, {WARNING_KEY: text}))


def resume(state: TrainState, saved: dict[str, Any] | None) -> None:
    """Bring back weights, optimiser, schedule, counters and random streams from a checkpoint."""
    if saved is None:
        return
    state.trainable.load_state_dict(saved["trainable"])
    if state.ema is not None and saved.get("ema") is not None:
        state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    schedule = dict(saved["scheduler"])
    if "milestones" in schedule:  # MultiStepLR counts on a Counter (missing milestone -> 0)
        schedule["milestones"] = Counter(schedule["milestones"])
    state.scheduler.load_state_dict(schedule)
    state.step = state.resumed_from = saved["step"]
    state.history = list(saved.get("history", []))
    if "position" in saved:
        state.epoch, state.position = saved["epoch"], saved["position"]
    else:  # written before positions were recorded: continue at the next epoch, as those runs did
        state.epoch, state.position = saved["epoch"] + 1, 0
    restore_rng(saved["rng"][min(state.rank, len(saved["rng"]) - 1)])
    log.info("rank %d resumed at step %d, epoch %d, batch %d (lr %.3g)", state.rank, state.step, state.epoch,
             state.position, state.scheduler.get_last_lr()[0])


class RayDataStream:
    """This rank's Ray Data shard, iterated once for the whole run (the dataset holds every epoch:
    ``loaders.ray_dataset``) and cut into epochs of ``per_epoch`` batches. A watchdog calls
    ``on_stall(seconds)`` when no batch has come for ``stall_s`` (and again every ``stall_s`` after),
    so a pipeline that waits on resources is reported instead of hanging silently."""

    def __init__(self, shard: Any, lcfg: LoaderParams, per_epoch: int, on_stall: Callable[[float], None],
                 stall_s: float = 45.0) -> None:
        self.shard, self.lcfg, self.per_epoch = shard, lcfg, max(1, per_epoch)
        self.on_stall, self.stall_s = on_stall, stall_s
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self._waiting_since: float | None = None

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self._batches is None:
            self._batches = iter(self.shard.iter_torch_batches(
                batch_size=self.lcfg.batch_size, drop_last=True,
                local_shuffle_buffer_size=self.lcfg.shuffle_buffer))
            threading.Thread(target=self._watch, name="srcore-ray-data-watchdog", daemon=True).start()
        for _ in range(self.per_epoch):
            self._waiting_since = time.monotonic()
            batch = next(self._batches, None)
            self._waiting_since = None
            if batch is None:
                return
            yield batch["lr"], batch["hr"]

    def _watch(self) -> None:
        reported = 0.0
        while True:
            time.sleep(min(5.0, self.stall_s / 4))
            since = self._waiting_since
            waited = time.monotonic() - since if since is not None else 0.0
            if waited >= self.stall_s and waited - reported >= self.stall_s:
                reported = waited
                self.on_stall(waited)
            elif since is None:
                reported = 0.0


def _stall_warning(state: TrainState) -> Callable[[float], None]:
    def warn(waited: float) -> None:
        text = (f"rank {state.rank}: Ray Data has delivered no batch for {waited:.0f} s; its read tasks may "
                "be waiting for CPUs the training ranks hold (leave some free: ray.cpus_per_worker, "
                "ray.num_workers) or for the object store; see the run's ray.log")
        log.warning("%s", text)
        _send(state.config, {WARNING_KEY: text})

    return warn


def _loader(state: TrainState) -> Callable[[int], Iterator[Batch]]:
    """One epoch of (lr, hr) batches for this rank, from the configured loader back-end; every
    rank gets the same number of batches."""
    lcfg, cfg = state.lcfg, state.cfg
    if lcfg.backend == "ray_data":
        import ray.train

        stream = RayDataStream(ray.train.get_dataset_shard("train"), lcfg,
                               int(state.config.get("batches_per_epoch") or 1), _stall_warning(state))
        return stream.epoch
    dataset = ShardPairs(shard_set(state.config["shards"], cfg.scale), cfg.scale, lcfg.patch_size,
                         state.rank, state.world, seed=lcfg.seed, shuffle_buffer=lcfg.shuffle_buffer)
    loader = DataLoader(dataset, batch_size=lcfg.batch_size, num_workers=lcfg.num_workers, drop_last=True)

    def torch_epoch(epoch: int) -> Iterator[Batch]:
        dataset.set_epoch(epoch)
        yield from loader

    return torch_epoch


def epoch_batches(state: TrainState) -> Iterator[Batch]:
    """The rest of the current epoch: batches already trained (``state.position``) are drawn and
    skipped, so a resumed run continues where the checkpoint left off."""
    seen = 0
    for batch in state.batches(state.epoch):
        seen += 1
        if seen <= state.position:
            continue
        state.position = seen
        yield batch
    if seen == 0:
        raise DataError(f"rank {state.rank} of {state.world} got no full batch of {state.lcfg.batch_size} in "
                        f"epoch {state.epoch}; prepare more data or lower loader.batch_size")


def _connect_ranks(state: TrainState) -> None:
    """Node list for the record, DDP wrapping when several ranks train, optional compile."""
    import ray
    import ray.train.torch

    state.nodes = [ray.get_runtime_context().get_node_id()]
    wrapped: nn.Module = state.trainable
    if state.world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * state.world
        dist.all_gather_object(gathered, state.nodes[0])
        state.nodes = gathered
        wrapped = ray.train.torch.prepare_model(state.trainable,
                                                parallel_strategy_kwargs={"find_unused_parameters": False})
    state.runner = torch.compile(wrapped) if state.cfg.compile else wrapped


def compute_loss(state: TrainState, lr_img: torch.Tensor, hr_img: torch.Tensor) -> torch.Tensor:
    """The training objective: reconstruction L1/Charbonnier, plus distillation terms for a student."""
    cfg = state.cfg
    sr, feats = state.runner(lr_img)
    loss = reconstruction_loss(sr.float(), hr_img, cfg.loss)
    if state.teacher is None:
        _add_terms(state, {"rec": loss})
        return loss
    loss = loss * cfg.w_rec
    with torch.no_grad():
        t_feats = state.teacher.forward_features(lr_img)
        t_sr = state.teacher.reconstruct(t_feats, lr_img)
    terms = state.trainable.distill(sr, feats, t_sr, t_feats)
    _add_terms(state, {"rec": loss, **{f"distill_{k}": v for k, v in terms.items()}})
    for term in terms.values():
        loss = loss + term
    return loss


def _add_terms(state: TrainState, terms: dict[str, torch.Tensor]) -> None:
    """Running sums of the weighted loss terms, kept on the device (no host sync per step)."""
    for name, value in terms.items():
        value = value.detach().float()
        state.terms[name] = state.terms[name] + value if name in state.terms else value
    state.term_steps += 1


def train_step(state: TrainState, lr_img: torch.Tensor, hr_img: torch.Tensor) -> None:
    """One optimisation step on one batch."""
    lr_img, hr_img = lr_img.to(state.device), hr_img.to(state.device)
    if state.cfg.channels_last:
        lr_img = lr_img.contiguous(memory_format=torch.channels_last)
    use_amp = state.cfg.amp == "bf16" or (state.cfg.amp == "auto" and state.device.type == "cuda")
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss = compute_loss(state, lr_img, hr_img)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if state.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(state.trainable.parameters(), state.cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1
    state.samples += lr_img.shape[0]
    state.window.append(loss.detach())


def validate(state: TrainState) -> float:
    """PSNR-Y of the exported weights (EMA when kept) on the held-out set."""
    return evaluate_dataset(state.export, state.cfg.val_dataset, state.cfg.scale, device=state.device).psnr_y


def progress_metrics(state: TrainState) -> dict[str, Any]:
    """What the driver's progress display shows between validations."""
    return {"step": state.step, "steps": state.last_step, "epoch": state.epoch,
            "lr": state.scheduler.get_last_lr()[0],
            "loss": torch.stack(list(state.window)).mean().item() if state.window else math.nan,
            "samples_per_s": state.samples * state.world / max(1e-9, time.perf_counter() - state.t0),
            "val_psnr_y": state.last_psnr}


def _peak_memory_mb(device: torch.device) -> float:
    """The rank's peak memory: CUDA's max allocated on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def log_point(state: TrainState) -> dict[str, Any]:
    """One live tracking point: mean loss terms since the last point (``loss_rec``, ``loss_distill_*``),
    learning rate, samples/s over the interval (all ranks) and peak memory; resets the sums."""
    now, samples = time.perf_counter(), state.samples
    since, before = state.logged_at
    steps = max(1, state.term_steps)
    point: dict[str, Any] = {f"loss_{k}": v.item() / steps for k, v in state.terms.items()}
    point.update(step=state.step, lr=state.scheduler.get_last_lr()[0],
                 samples_per_s=(samples - before) * state.world / max(1e-9, now - since),
                 memory_peak_mb=_peak_memory_mb(state.device))
    state.terms, state.term_steps, state.logged_at = {}, 0, (now, samples)
    return point


def save_checkpoint(state: TrainState, folder: str | os.PathLike,
                    metrics: dict[str, Any] | None = None) -> None:
    """state.pt + state.json (see ``srcore.train.state``; ``metrics``: what was reported with it) and the
    exportable model.pth."""
    tensors = {"trainable": state.trainable.state_dict(),
               "ema": state.ema.state_dict() if state.ema is not None else None,
               "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
               "torch_rng": [torch.get_rng_state()]}
    rng = rng_state()
    meta = {"step": state.step, "epoch": state.epoch, "position": state.position,
            "rng": [{"python": rng["python"], "numpy": rng["numpy"]}], "config": state.config,
            "history": state.history, "nodes": state.nodes, "resumed_from": state.resumed_from,
            "metrics": metrics or {}}
    write_state(folder, tensors, meta)
    save_model(Path(folder) / "model.pth", state.export, state.cfg.model,
               extra={"step": state.step, "stage": state.config["stage"]})


def report(state: TrainState, validation: bool = True) -> None:
    """Validate (rank 0, unless ``validation`` is off: a timed or stopping checkpoint), record
    history, checkpoint, and hand metrics to Ray Train. Every rank calls it at the same step.

    Rank 0 saves the checkpoint on its own disk and queues its upload (``srcore.train.uploads``);
    the checkpoint handed to Ray Train is the newest one whose upload has finished, if any."""
    if state.rank == 0 and validation:
        state.last_psnr = validate(state)
    metrics = progress_metrics(state)
    if state.rank == 0 and validation:
        state.history.append({k: metrics[k] for k in ("step", "epoch", "loss", "lr", "val_psnr_y")})
    if state.uploads is not None:
        folder = state.uploads.save(lambda f: save_checkpoint(state, f, metrics), state.step)
        state.uploads.submit(folder, metrics)
    _report_uploaded(state, metrics)
    _send_progress(state, {**metrics, "kind": "validation" if validation else "checkpoint"})
    log.debug("step %d loss %.4f lr %.3g val PSNR-Y %.2f", state.step, metrics["loss"], metrics["lr"],
              metrics["val_psnr_y"])


def _report_uploaded(state: TrainState, metrics: dict[str, Any]) -> None:
    """``ray.train.report`` on every rank; rank 0 attaches the newest finished upload, with the metrics
    of its own step (Ray ranks checkpoints by them). The files are in the run's folder already."""
    import ray.train
    from ray.train import CheckpointUploadMode

    checkpoint = None
    done = state.uploads.take_uploaded() if state.uploads is not None else None
    if done is not None:
        storage = ray.train.get_context().get_storage()  # where Ray keeps this run: the same run_dir
        checkpoint = ray.train.Checkpoint(f"{storage.experiment_fs_path}/{done.name}",
                                          filesystem=storage.storage_filesystem)
        metrics = done.metrics
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def _finish_uploads(state: TrainState, stopping: bool) -> None:
    """After the last step: wait for rank 0's uploads (within the stop grace when stopping) and hand
    the last one to Ray Train; every rank reports once more so the ranks' report counts agree. If
    the checkpoints could not reach the store, rank 0 raises, naming the local copy."""
    uploads = state.uploads
    if uploads is not None:
        wait = state.cfg.stop_grace_s / 2 if stopping else state.cfg.ray.upload_retry_s + 60
        deadline = time.monotonic() + wait
        uploaded = uploads.wait(wait)
        while uploaded and not uploads.failed and not uploads.ready_to_hand_over():
            if time.monotonic() > deadline:  # uploaded, but the store stopped answering since
                uploaded = False
                break
            time.sleep(1.0)
        if not uploaded and not uploads.failed:
            uploads.failed = (f"the checkpoint of step {state.step} was not in {state.config['run_dir']} "
                              f"after {wait:.0f} s")
    _report_uploaded(state, progress_metrics(state))
    if uploads is not None and uploads.failed:
        raise CheckpointUploadFailed(f"{state.cfg.name}: {uploads.failed}; the newest checkpoint is kept "
                                     f"locally at {uploads.where()}; run the same command again on that "
                                     "machine once the store answers to resume from it")


def newest_saved(state: TrainState) -> dict[str, Any] | None:
    """What to resume from: the store's newest readable checkpoint, or rank 0's local one when it holds
    a later step of the same run (its upload never finished). Rank 0 decides for every rank."""
    import ray.train

    saved = load_with_fallback(ray.train.get_checkpoint())
    local = _newer_local(state, saved) if state.uploads is not None else None
    if state.world > 1:
        import torch.distributed as dist

        shared = [local]
        dist.broadcast_object_list(shared, src=0)
        local = shared[0]
    return local if local is not None else saved


def _newer_local(state: TrainState, saved: dict[str, Any] | None) -> dict[str, Any] | None:
    folder = state.uploads.newest_local()
    if folder is None:
        return None
    try:
        local = read_state(folder)
    except SrcoreError as exc:
        log.warning("%s; not resumed from it", exc)
        return None
    recorded = local.get("config") or {}
    if not _same_run(recorded, state.config) or local.get("step", 0) <= (saved or {}).get("step", -1):
        return None
    log.warning("%s: resuming from the local checkpoint %s (step %s), newer than the store's (step %s); "
                "delete that folder to start from the store's instead", state.cfg.name, folder,
                local.get("step"), (saved or {}).get("step", "none"))
    state.uploads.submit(folder, local.get("metrics") or {"step": local.get("step")})  # the store lacks it
    return local


def _same_run(recorded: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a checkpoint was written by a run with this stage config (where and how often it
    checkpoints aside), so that a stale local copy never seeds a different run."""
    def what(c: dict[str, Any]) -> list[Any]:
        train = {k: v for k, v in (c.get("train") or {}).items()
                 if k not in RUN_ONLY_FIELDS}
        return [c.get("stage"), train, c.get("loader")]

    return what(recorded) == what(config)


def _send_progress(state: TrainState, metrics: dict[str, Any]) -> None:
    """Rank 0 tells the driver's progress display where the run is."""
    if state.rank == 0:
        _send(state.config, {"stage": state.config["stage"], **metrics})


def _send(config: dict[str, Any], event: dict[str, Any], confirm: bool = False) -> None:
    """To the driver (``srcore.train.channel``). Progress is sent without waiting: one rank's calls
    reach the actor in the order they were made, and the step loop must not wait on a round trip.
    ``confirm`` waits until the actor holds the event, for the last one a rank sends before it ends."""
    channel = config.get("channel")
    if channel is None:
        return
    import ray

    try:
        sent = channel.put.remote(event)
        if confirm:
            ray.get(sent, timeout=10)
    except Exception:  # a full, slow or vanished channel must never stop training
        log.debug("event to the driver dropped", exc_info=True)


def _train_epochs(state: TrainState, control: StepControl) -> bool:
    """Train to the last step, or until ``control`` says stop (with a checkpoint of that step); True
    if it stopped early."""
    progress_every, last_sent = 1.0, time.perf_counter()
    while state.step < state.last_step:
        state.trainable.train()
        for lr_img, hr_img in epoch_batches(state):
            train_step(state, lr_img, hr_img)
            state.faults.after_step(state.step, state.rank, Path(state.config["run_dir"]) / ".failed_once")
            if state.rank == 0 and state.step % state.cfg.log_every == 0:
                _send_progress(state, {"kind": "log", **log_point(state)})
            action = control.after_step()
            if state.step % state.cfg.val_every == 0 or state.step == state.last_step:
                report(state)
                control.checkpointed()
            elif action is Action.RECORD:
                _report_uploaded(state, progress_metrics(state))
            elif action is not Action.NONE:
                report(state, validation=False)
                control.checkpointed()
            elif time.perf_counter() - last_sent > progress_every:
                _send_progress(state, progress_metrics(state))
                last_sent = time.perf_counter()
            if action is Action.STOP:
                log.info("rank %d stopped at step %d on request", state.rank, state.step)
                return True
            if state.step >= state.last_step:
                return False
        state.epoch, state.position = state.epoch + 1, 0
    return False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"stage": "teacher"|"distill", "train": dict, "loader": dict,
    "shards": folder, "cwd": folder to resolve relative paths against, "run_dir": the run's folder,
    "faults": FaultPlan fields, "channel": the stage's channel actor (``srcore.train.channel``: events
    for the driver, its stop request)}."""
    import ray.train
    import ray.train.torch

    if os.path.isdir(config["cwd"]):  # the driver's folder, where this node has it (no shared disk: not)
        os.chdir(config["cwd"])
    ctx = ray.train.get_context()
    try:
        state = setup(config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
        state.uploads = _uploads(config, state.cfg) if state.rank == 0 else None
        resume(state, newest_saved(state))
        _send_progress(state, {"kind": "start", "step": state.step, "resumed_from": state.resumed_from})
        _connect_ranks(state)
        state.batches = _loader(state)
        uploads = state.uploads
        control = StepControl(config.get("channel"), state.rank, state.world, state.device,
                              state.cfg.checkpoint_every_s, failing=uploads and (lambda: uploads.failed),
                              uploaded=uploads and uploads.has_uploaded)
        stopped = _train_epochs(state, control)
        _finish_uploads(state, stopped)
        if state.uploads is not None and not stopped:
            state.uploads.discard_local()  # the run is complete in the store
    except SrcoreError as exc:
        # Not retried: the same data and config would fail the same way on every attempt.
        log.error("%s", exc)
        _send(config, {FATAL_KEY: str(exc), "fatal_type": type(exc).__name__}, confirm=True)


def train_in_process(config: dict[str, Any], device: torch.device | str = "cpu") -> TrainState:
    """Train ``config`` (the ``train_loop_per_worker`` dict, without ``channel``) in this process, one
    rank, no Ray, no checkpoints and no validation: for studies that train many small models with the
    pipeline's very steps (``bench/distill_ablation.py``). Returns the final state (``state.export``
    is the model to evaluate)."""
    state = setup(config, 0, 1, torch.device(device))
    state.runner = torch.compile(state.trainable) if state.cfg.compile else state.trainable
    state.batches = _loader(state)
    while state.step < state.last_step:
        state.trainable.train()
        for lr_img, hr_img in epoch_batches(state):
            train_step(state, lr_img, hr_img)
            if state.step >= state.last_step:
                break
        else:
            state.epoch, state.position = state.epoch + 1, 0
    return state
