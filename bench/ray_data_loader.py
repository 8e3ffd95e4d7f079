"""The Ray Data loader back-end against the torch back-end, Ray Train on a two-node local cluster.

Same model, batch, shards and ranks (two, one a node); each node has ``--cpus`` CPUs, of which
each rank takes ``--cpus-per-rank`` (the rest are where Ray Data's read tasks run). For each
back-end: the time from ``run_stage`` to the first trained step (Ray Train's start-up included,
so the difference is the back-end's own) and the steady samples/s (a run of ``--steps`` minus a
run of ``--warmup`` steps, so start-up is left out), and the ratio of Ray Data to torch.

Run: python bench/ray_data_loader.py [--steps 60] [--warmup 10] [--cpus 2] [--cpus-per-rank 1]
(needs shards: srcore data prepare)
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import report
from local_ray_cluster import local_cluster

from srcore.config import load_params

MODEL = {"teacher.model": "dvmsr", "teacher.model_overrides": {"embed_dim": 24, "depths": [2, 2]},
         "teacher.ema_decay": None, "loader.batch_size": 8, "loader.patch_size": 24, "profile": None,
         "teacher.val_dataset": "embedded"}


def _stage(backend: str, steps: int, name: str, storage: str, cpus_per_rank: float) -> tuple[float, float]:
    """(seconds to the first trained step, samples/s the loop measured) of one teacher run."""
    from srcore.train.runner import run_stage

    p = load_params("params.yaml", {
        **MODEL, "loader.backend": backend, "teacher.steps": steps, "teacher.val_every": steps,
        "teacher.log_every": 1, "teacher.name": name, "teacher.ray.num_workers": 2,
        "teacher.ray.cpus_per_worker": cpus_per_rank, "teacher.ray.storage_path": storage})
    t0, first = time.perf_counter(), []

    def on_progress(event: dict) -> None:
        if not first and int(event.get("step", 0) or 0) >= 1:
            first.append(time.perf_counter() - t0)

    r = run_stage(p, "teacher", on_progress=on_progress)
    return (first[0] if first else float("nan")), float(r.metrics["samples_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--cpus-per-rank", type=float, default=1.0)
    args = ap.parse_args()
    batch = MODEL["loader.batch_size"] * 2  # two ranks
    rows = []
    with local_cluster(2, cpus_per_node=args.cpus), tempfile.TemporaryDirectory() as storage:
        for backend in ("torch", "ray_data"):
            first, short_rate = _stage(backend, args.warmup, f"{backend}-short", storage, args.cpus_per_rank)
            _, long_rate = _stage(backend, args.warmup + args.steps, f"{backend}-long", storage,
                                  args.cpus_per_rank)
            # the loop's samples/s counts from its first step: the difference of the two runs is steady
            t_short = args.warmup * batch / short_rate
            t_long = (args.warmup + args.steps) * batch / long_rate
            rows.append({"backend": backend, "first_step_s": first,
                         "steady_samples_per_s": args.steps * batch / (t_long - t_short)})
    base = rows[0]
    for r in rows:
        r["first_step_minus_torch_s"] = r["first_step_s"] - base["first_step_s"]
        r["samples_per_s_vs_torch"] = r["steady_samples_per_s"] / base["steady_samples_per_s"]
    report("ray_data_loader", rows, f"loader back-ends, Ray Train 2 ranks on 2 nodes x {args.cpus} CPUs, "
           f"{args.cpus_per_rank:g} CPU a rank (DVMSR embed 24, batch 8 a rank, LR 24x24)")


if __name__ == "__main__":
    main()
