"""Training throughput on CPU: a plain single-process loop vs Ray Train with 1 and 2 workers,
same model, batch and data (samples/s over the timed steps, after warm-up steps).

Run: python bench/train_throughput.py [--steps 60] (needs shards: srcore data prepare)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import report
from torch.utils.data import DataLoader

from srcore.config import load_params
from srcore.data.loaders import ShardPairs, shard_files
from srcore.models import build
from srcore.train.losses import reconstruction_loss

MODEL = {"teacher.model": "dvmsr", "teacher.model_overrides": {"embed_dim": 24, "depths": [2, 2]},
         "teacher.ema_decay": None, "loader.batch_size": 8, "loader.patch_size": 24, "profile": None}


def plain(params, steps: int, warmup: int) -> float:
    cfg, lcfg = params.teacher, params.loader
    torch.set_num_threads(2)
    model = build(cfg.model, cfg.scale, **cfg.model_overrides)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    ds = ShardPairs(shard_files(params.prepare.out, cfg.scale), cfg.scale, lcfg.patch_size, seed=lcfg.seed,
                    shuffle_buffer=lcfg.shuffle_buffer)
    done, t0 = 0, None
    epoch = 0
    while done < steps + warmup:
        ds.set_epoch(epoch)
        for lr_img, hr_img in DataLoader(ds, batch_size=lcfg.batch_size, drop_last=True):
            if done == warmup:
                t0 = time.perf_counter()
            loss = reconstruction_loss(model(lr_img), hr_img)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps + warmup:
                break
        epoch += 1
    return steps * lcfg.batch_size / (time.perf_counter() - t0)


def ray_train(params, workers: int, steps: int, warmup: int, storage: str) -> float:
    from srcore.train.runner import run_stage

    def run(n: int, name: str) -> float:
        p = load_params(None, {**MODEL, "teacher.steps": n, "teacher.val_every": n, "teacher.name": name,
                               "teacher.val_dataset": "embedded", "teacher.ray.num_workers": workers,
                               "teacher.ray.cpus_per_worker": 2 / workers,
                               "teacher.ray.storage_path": storage, "prepare.out": params.prepare.out})
        r = run_stage(p, "teacher")
        return float(r.metrics["samples_per_s"]), n

    # samples/s is measured inside the loop from its first step; subtracting a warm-up-only run
    # isolates the steady state.
    short_rate, _ = run(warmup, f"bench-{workers}w-short")
    long_rate, _ = run(steps + warmup, f"bench-{workers}w-long")
    batch = params.loader.batch_size
    t_short = warmup * batch / short_rate
    t_long = (steps + warmup) * batch / long_rate
    return steps * batch / (t_long - t_short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    params = load_params("params.yaml", MODEL)
    rows = [{"runner": "plain loop (1 process, 2 threads)",
             "samples_per_s": plain(params, args.steps, args.warmup)}]
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            rows.append({"runner": f"Ray Train, {workers} worker(s)",
                         "samples_per_s": ray_train(params, workers, args.steps, args.warmup, storage)})
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["overhead_vs_plain_pct"] = 100 * (base / r["samples_per_s"] - 1)
    report("train_throughput", rows, "training throughput (DVMSR embed 24, batch 8, LR 24x24, CPU)")


if __name__ == "__main__":
    main()
