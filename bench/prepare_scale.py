"""Patch preparation at scale: time per image as the set grows (1k, 4k, 16k images by default).

Synthetic 96x96 images, one per shard, x2/x3/x4 (crop 48, step 48): little work per image, so
whatever the driver spends per shard shows. Each size is a fresh run into an empty folder, on the
process pool and on a local Ray with as many CPUs (warmed up first: its workers are started
once, while the pool starts its processes on every run). Target: time per image at the largest
size within 1.3x of the smallest, for both executors. ``driver`` is a third, made-up executor
that answers every job at once without building anything: the driver's own work per shard, alone.
``steady`` leaves out start-up: the time from the first finished shard to the last, per image
after the first. ``rerun_s`` is a second run
with nothing to do (listing, journal, and each shard's size and sha256 checked). ``driver_cpu`` is
the CPU time of this process (the driver, with the pool's or Ray's threads in it) per image: the
part that must not grow with the set, and the figure least disturbed by a busy host. Sets smaller
than the largest run up to three times, best of each figure.
Run: python bench/prepare_scale.py [--sizes 1000 4000 16000] [--workers 2] [--executors driver local ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import report
from PIL import Image

from srcore.config import PrepareParams
from srcore.data.executors import LocalPool, RayTasks
from srcore.data.prepare import prepare
from srcore.data.shard_job import ShardJob, ShardResult

SIDE = 96


def _synthetic(folder: Path, n: int) -> None:
    """``n`` distinct smooth images with mild noise (compressible, as photos are)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for i in range(n):
        base = 128 + 90 * np.sin(xx / (5 + i % 13) + i) * np.cos(yy / (7 + i % 11))
        img = np.clip(base[..., None] + rng.normal(0, 6, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)


def _subset(pool: Path, folder: Path, n: int) -> None:
    folder.mkdir()
    for p in sorted(pool.iterdir())[:n]:
        os.link(p, folder / p.name)


class DriverOnly:
    """An executor that builds nothing and answers each job at once with made-up entries: what
    is left is the driver's own work per shard (planning, journal, manifest)."""

    def run(self, jobs: list[ShardJob]) -> Iterator[ShardResult]:
        for job in jobs:
            stems = [Path(name).stem for _, name in job.images]
            entries = {s: {"file": f, "fingerprint": "0" * 64, "sha256": "0" * 64, "rows": 4, "bytes": 1,
                           "images": stems} for s, f in job.shards.items()}
            yield ShardResult(job.index, entries, [], ["0" * 64] * len(job.images))


def _run(raw: Path, out: Path, executor, workers: int) -> dict:
    params = PrepareParams(input=str(raw), out=str(out), scales=(2, 3, 4), crop_size=48, step=48,
                           images_per_shard=1, workers=workers)
    done: list[float] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = prepare(params, executor=executor, on_progress=lambda n: done.append(time.perf_counter()))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert summary.built_shards == 3 * summary.images, summary
    rerun = float("nan")
    if not isinstance(executor, DriverOnly):  # it wrote no shard to find again
        t0 = time.perf_counter()
        again = prepare(params, executor=executor)
        rerun = time.perf_counter() - t0
        assert again.built_shards == 0, again
    return {"seconds": seconds, "ms_per_image": 1e3 * seconds / summary.images,
            "steady_ms_per_image": 1e3 * (done[-1] - done[0]) / (len(done) - 1),
            "driver_cpu_ms_per_image": 1e3 * cpu / summary.images, "rerun_s": rerun}


def _repeats(n: int, largest: int) -> int:
    """Smaller sets run more than once (best of each figure: on a shared host noise only slows a
    run down), the largest once; the ratios err against the largest."""
    return max(1, min(3, largest // n // 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executors", nargs="+", choices=["local", "ray", "driver"],
                    default=["driver", "local", "ray"])
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        _synthetic(tmp / "pool", sizes[-1])
        print(f"{sizes[-1]} synthetic images in {time.perf_counter() - t0:.0f} s")
        for n in sizes:
            _subset(tmp / "pool", tmp / f"raw-{n}", n)
        for name in args.executors:
            if name == "ray":
                from srcore.raycluster import ensure_ray

                # Ray starts its workers at niceness 15; on a shared host that alone would slow them down
                os.environ.setdefault("RAY_worker_niceness", "0")
                ensure_ray(None, num_cpus=args.workers)
                executor = RayTasks()
                _run(tmp / f"raw-{sizes[0]}", tmp / "warm-up", executor, args.workers)  # start its workers
                shutil.rmtree(tmp / "warm-up")
            elif name == "local":
                executor = LocalPool(args.workers)
            else:
                executor = DriverOnly()
            first: dict | None = None
            for n in sizes:
                runs = []
                for _ in range(_repeats(n, sizes[-1])):
                    runs.append(_run(tmp / f"raw-{n}", tmp / "out", executor, args.workers))
                    shutil.rmtree(tmp / "out")
                r = {k: min(run[k] for run in runs) for k in runs[0]}
                first = first or r
                rows.append({"executor": name, "images": n, **r,
                             "x_vs_smallest": r["ms_per_image"] / first["ms_per_image"],
                             "steady_x_vs_smallest": r["steady_ms_per_image"] / first["steady_ms_per_image"]})
                print(rows[-1])
    report("prepare_scale", rows, f"prepare at scale: {SIDE}x{SIDE} synthetic images, one per shard, "
                                  f"x2/x3/x4, {args.workers} workers (process pool / local Ray CPUs)")


if __name__ == "__main__":
    main()
