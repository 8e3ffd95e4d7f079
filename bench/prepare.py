"""Patch preprocessing: ours (Parquet shards) vs a BasicSR-style PNG-folder pipeline.

Both cut the same sub-images (HR 480/step 240, LR from the same MATLAB bicubic) from the same
synthetic 2K images with the same number of processes; the peer writes every crop as a PNG
file (HR once, LR per scale), as BasicSR's extract_subimages does with OpenCV/PIL.
Run: python bench/prepare.py [--images 40] [--workers 2]

``--executor ray`` measures the Ray executor instead, against the process pool on the same cores:
a local cluster of one-CPU nodes (127.0.0.2, .3, ...) on this host, first with ``--nodes`` nodes,
then with one, each run beside a pool with as many processes. Ray's first run on fresh nodes
(worker start-up and imports) is reported apart from a warm run; the pool pays its start-up on
every run. One image per shard, so that a few images keep every core busy.
Run: python bench/prepare.py --executor ray [--images 12] [--nodes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import report
from PIL import Image

from srcore.config import PrepareParams
from srcore.data.executors import LocalPool
from srcore.data.image_io import read_rgb
from srcore.data.patches import extract_pairs
from srcore.data.prepare import prepare
from srcore.data.shard_job import one_thread_each

SCALES = (2, 3, 4)


def _synthetic(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1356, 0:2040]
    for i in range(n):
        base = 128 + 70 * np.sin(xx / (13 + i)) * np.cos(yy / (17 + 2 * i))
        img = np.clip(base[..., None] + rng.normal(0, 12, (1356, 2040, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:04d}.png", compress_level=1)


def _png_folder_job(args: tuple[str, str]) -> None:
    path, out = args
    img = read_rgb(path)
    stem = Path(path).stem
    pairs = extract_pairs(img, SCALES, 480, 240, 0)
    for s, items in pairs.items():
        for p in items:
            if s == SCALES[0]:
                Image.fromarray(p.hr).save(f"{out}/HR/{stem}_s{p.index:03d}.png", compress_level=3)
            Image.fromarray(p.lr).save(f"{out}/LRx{s}/{stem}_s{p.index:03d}.png", compress_level=3)


def _init() -> None:
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _measure(name: str, cores: int, executor, raw: Path, images: int) -> dict:
    """One run: its whole rate (start-up included) and its steady rate, the images finished after
    the first wave (one shard per core) over the time after that wave."""
    params = PrepareParams(input=str(raw), out=str(raw.parent / "out"), scales=SCALES, crop_size=480,
                           step=240, images_per_shard=1)
    done: list[float] = []
    t0 = time.perf_counter()
    prepare(params, executor=executor, on_progress=lambda n: done.append(time.perf_counter()))
    dt = time.perf_counter() - t0
    shutil.rmtree(raw.parent / "out")
    return {"run": name, "cores": cores, "images_per_s": images / dt,
            "steady_images_per_s": (images - cores) / (done[-1] - done[cores - 1])}


def _best(runs) -> dict:
    runs = list(runs)
    return {**runs[0], "images_per_s": max(r["images_per_s"] for r in runs),
            "steady_images_per_s": max(r["steady_images_per_s"] for r in runs)}


def ray_vs_pool(images: int, nodes: int, repeats: int) -> None:
    """Ray tasks on ``nodes`` then one local one-CPU nodes vs a process pool of as many processes."""
    from local_ray_cluster import local_cluster

    from srcore.data.executors import RayTasks

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        _synthetic(raw, images)
        one_thread_each()  # the in-process run uses one core, as each pool process and Ray task does
        _measure("warm-up", 1, LocalPool(1), raw, images)  # numba compiles in this process first
        # Ray starts its workers at niceness 15 (the raylet first); on a host shared with other
        # work that alone would halve their share of the cores, and the pool runs at 0.
        with local_cluster(nodes, env={"RAY_worker_niceness": "0"}) as (cluster, workers):
            ray = RayTasks(cluster.address)
            for n in (nodes, 1):
                while len(workers) > n - 1:  # one node fewer: its processes end with it
                    cluster.remove_node(workers.pop())
                pool = "in-process (1 core)" if n == 1 else f"process pool, {n} processes"
                first = []
                if n == nodes:  # fresh nodes: Ray starts its workers, which import torch and numba
                    first = [_measure(f"ray, {n} nodes x 1 CPU, first run", n, ray, raw, images)]
                # interleaved repeats, best of each: the host is shared, and noise only slows a run down
                name = f"ray, {n} node(s) x 1 CPU, warm"
                tries = [(_measure(pool, n, LocalPool(n), raw, images), _measure(name, n, ray, raw, images))
                         for _ in range(repeats)]
                runs = [_best(t[0] for t in tries), *first, _best(t[1] for t in tries)]
                for r in runs:
                    r["x_vs_pool"] = r["images_per_s"] / runs[0]["images_per_s"]
                    r["steady_x_vs_pool"] = r["steady_images_per_s"] / runs[0]["steady_images_per_s"]
                rows += runs
    report("prepare_ray", rows, f"prepare executors at equal cores, {images} synthetic 2040x1356 images, "
                                f"x2/x3/x4, one image per shard, one-CPU local Ray nodes, best of {repeats}")
    warm = {r["cores"]: r["steady_images_per_s"] for r in rows if r["run"].endswith("warm")}
    per_core = warm[1]
    efficiency = warm[nodes] / (nodes * per_core)
    est = 16 * 16 * per_core * efficiency
    print(f"scaling (steady rates): {nodes} nodes give {warm[nodes] / per_core:.2f}x one node "
          f"({efficiency:.0%} of linear; the nodes share this host's cores with all else running on it)")
    print(f"paper estimate, 16 nodes x 16 cores at the measured per-core rate and {efficiency:.0%} "
          f"efficiency: {est:.0f} images/s (LSDIR, 85k images: {85_000 / est / 60:.0f} min); what the "
          "driver spends per shard as the set grows is measured by bench/prepare_scale.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=None, help="default: 40 (local), 12 (ray)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--nodes", type=int, default=2, help="local Ray nodes for --executor ray")
    ap.add_argument("--repeats", type=int, default=2, help="--executor ray: best of this many runs")
    args = ap.parse_args()
    if args.executor == "ray":
        ray_vs_pool(args.images or 12, args.nodes, args.repeats)
        return
    args.images = args.images or 40
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _synthetic(tmp / "raw", args.images)
        rows = []
        for encoding in ("raw", "png"):
            out = tmp / f"ours-{encoding}"
            t0 = time.perf_counter()
            prepare(PrepareParams(input=str(tmp / "raw"), out=str(out), scales=SCALES, crop_size=480,
                                  step=240, encoding=encoding, workers=args.workers))
            dt = time.perf_counter() - t0
            rows.append({"pipeline": f"ours parquet ({encoding})", "images_per_s": args.images / dt,
                         "seconds": dt, "output_mb": _size(out) / 2**20})
            shutil.rmtree(out)
        peer = tmp / "png-folders"
        for sub in ["HR"] + [f"LRx{s}" for s in SCALES]:
            (peer / sub).mkdir(parents=True)
        jobs = [(str(p), str(peer)) for p in sorted((tmp / "raw").glob("*.png"))]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers, initializer=_init) as pool:
            pool.map(_png_folder_job, jobs)
        dt = time.perf_counter() - t0
        rows.append({"pipeline": "BasicSR-style PNG folders", "images_per_s": args.images / dt, "seconds": dt,
                     "output_mb": _size(peer) / 2**20})
        for r in rows[:2]:
            r["x_vs_png_folders"] = r["images_per_s"] / rows[-1]["images_per_s"]
        rows[-1]["x_vs_png_folders"] = 1.0
    report("prepare", rows, f"patch preprocessing, {args.images} synthetic 2040x1356 images, x2/x3/x4, "
                            f"{args.workers} processes")


if __name__ == "__main__":
    main()
