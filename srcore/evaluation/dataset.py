"""One benchmark at one scale: super-resolve every LR image, score PSNR-Y/SSIM-Y (border = scale).

Images are independent, so they can be scored by a worker pool: ``workers > 1`` uses this process's
pool of that many workers (:mod:`srcore.evaluation.pool`: started once, reused by later calls), or
scores in this process while the images left would not repay starting one; ``address`` maps the
same per-image function over a Ray cluster (every node must see the dataset and cache paths). Each
worker loads its own pixels from the small, picklable :class:`BenchmarkSource` and shares the
on-disk LR cache (atomic writes, content-keyed names), memory stays bounded per image (``tile``),
and results come back in dataset order, so the numbers are the same as the sequential path.
Progress goes to an ``on_image`` callback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from srcore.data.benchmarks import BenchmarkSource, benchmark_sources, count_images, dataset_label, load_pair
from srcore.data.image_io import write_png
from srcore.errors import DataError
from srcore.evaluation.pool import running_pool, shared_pool
from srcore.inference import TilePlan, plan_tiles, upscale_image
from srcore.metrics import psnr_ssim_y
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["DatasetResult", "EvalOptions", "OnImage", "evaluate", "evaluate_dataset", "score_image",
           "total_images"]

# on_image(dataset, image name, images done, images in the dataset)
OnImage = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate, shared by every image (picklable: it travels to the workers)."""

    scale: int
    device: str = "cpu"
    plan: TilePlan | None = None
    save_dir: str | None = None
    cache_dir: str | None = None


@dataclass
class DatasetResult:
    """Mean PSNR-Y / SSIM-Y of one dataset, plus the per-image values."""

    psnr_y: float
    ssim_y: float
    images: int
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("per_image")
        return d


def score_image(model: SRModel, source: BenchmarkSource, opts: EvalOptions) -> tuple[str, dict[str, float]]:
    """PSNR-Y and SSIM-Y of one image (and its SR PNG under ``save_dir``)."""
    item = load_pair(source, opts.scale, opts.cache_dir)
    sr = upscale_image(model, item.lr, opts.device, tile=opts.plan)
    if sr.shape != item.hr.shape:
        raise DataError(f"{source.dataset}/{item.name}: model output {sr.shape} does not match HR "
                        f"{item.hr.shape}")
    psnr, ssim = psnr_ssim_y(sr, item.hr, opts.scale)
    if opts.save_dir is not None:
        write_png(Path(opts.save_dir) / dataset_label(source.dataset) / f"{item.name}_x{opts.scale}.png", sr)
    return item.name, {"psnr_y": psnr, "ssim_y": ssim}


# Seconds from starting a pool to its workers' first results: each spawned interpreter imports torch
# and srcore and initialises numba (about 3 s measured on two cores, more on a loaded machine).
POOL_START_S = 3.0


def _run_local(model: SRModel, sources: list[BenchmarkSource], opts: EvalOptions, workers: int,
               tick: Callable[[str], None]) -> list[tuple[str, dict[str, float]]]:
    """Score on this machine's workers: the running pool if there is one, else in this process
    until the images left would repay starting one (see :mod:`srcore.evaluation.pool`)."""
    # Workers use this process's thread count: oneDNN convolutions round differently with a different
    # number of threads, which moves a few uint8 pixels, and the pool must give the sequential result.
    threads = torch.get_num_threads()
    scored: list[tuple[str, dict[str, float]]] = []
    if running_pool(workers, threads) is None:
        for source in sources:
            t0 = time.perf_counter()
            scored.append(score_image(model, source, opts))
            tick(scored[-1][0])
            if len(scored) >= 2 and _pool_pays(time.perf_counter() - t0, len(sources) - len(scored), workers):
                break
    rest = sources[len(scored):]
    if rest:
        scored += shared_pool(workers, threads).map(score_image, model, rest, opts,
                                                    on_result=lambda r: tick(r[0]))
    return scored


def _pool_pays(seconds_per_image: float, images_left: int, workers: int) -> bool:
    """Whether ``workers`` processes started now finish the images left sooner than this process:
    at best they divide the time left by their number, after :data:`POOL_START_S`. The estimate
    uses the last image (the first one carries this process's one-off start-up)."""
    return seconds_per_image * images_left * (1 - 1 / workers) > POOL_START_S


def _score_with_threads(model: SRModel, source: BenchmarkSource, opts: EvalOptions,
                        threads: int) -> tuple[str, dict[str, float]]:
    torch.set_num_threads(threads)
    return score_image(model, source, opts)


def _run_ray(model: SRModel, sources: list[BenchmarkSource], opts: EvalOptions, address: str,
             tick: Callable[[str], None]) -> list[tuple[str, dict[str, float]]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_score_with_threads)
    model_ref = ray.put(model.cpu().eval())
    threads = torch.get_num_threads()  # same kernels, same rounding as the sequential path
    pending = {remote.remote(model_ref, s, opts, threads): i for i, s in enumerate(sources)}
    results: list = [None] * len(sources)
    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        results[pending[done[0]]] = ray.get(done[0])
        tick(results[pending[done[0]]][0])
    return results


def evaluate_dataset(model: SRModel, dataset: str, scale: int, data_root: str | os.PathLike | None = None,
                     device: torch.device | str = "cpu", tile: TilePlan | int | None = None,
                     save_dir: str | os.PathLike | None = None, on_image: OnImage | None = None,
                     workers: int = 1, address: str | None = None,
                     cache_dir: str | os.PathLike | None = None) -> DatasetResult:
    """Evaluate ``model`` on one benchmark at ``scale`` with the field's protocol (border = scale).

    ``workers`` processes (CPU only; started only for work that repays them) or a Ray cluster at
    ``address`` score the images in parallel; the result is the same as with ``workers=1``."""
    model.eval()
    if tile is not None and not isinstance(tile, TilePlan):
        tile = plan_tiles(model, tile)
    sources = benchmark_sources(dataset, data_root)
    opts = EvalOptions(scale, str(device), tile, None if save_dir is None else str(save_dir),
                       None if cache_dir is None else str(cache_dir))
    done = 0

    def tick(name: str) -> None:
        nonlocal done
        done += 1
        if on_image is not None:
            on_image(dataset, name, done, len(sources))

    parallel = address is not None or (workers > 1 and len(sources) > 1 and str(device) == "cpu")
    if not parallel:
        scored = []
        for s in sources:
            scored.append(score_image(model, s, opts))
            tick(scored[-1][0])
    elif address is not None:
        scored = _run_ray(model, sources, opts, address, tick)
    else:
        scored = _run_local(model, sources, opts, workers, tick)
    per_image = dict(scored)
    return DatasetResult(
        psnr_y=float(np.mean([v["psnr_y"] for v in per_image.values()])),
        ssim_y=float(np.mean([v["ssim_y"] for v in per_image.values()])),
        images=len(per_image), per_image=per_image)


def evaluate(model: SRModel, datasets: list[str], scale: int, data_root: str | os.PathLike | None = None,
             device: torch.device | str = "cpu", tile: TilePlan | int | None = None,
             save_dir: str | os.PathLike | None = None, on_image: OnImage | None = None,
             workers: int = 1, address: str | None = None) -> dict[str, DatasetResult]:
    """Evaluate on several datasets; see :func:`evaluate_dataset`."""
    if tile is not None and not isinstance(tile, TilePlan):
        tile = plan_tiles(model.eval(), tile)
    return {name: evaluate_dataset(model, name, scale, data_root, device, tile, save_dir, on_image, workers,
                                   address) for name in datasets}


def total_images(datasets: list[str], data_root: str | os.PathLike | None = None) -> int:
    """Image count over datasets, for progress bars."""
    return sum(count_images(d, data_root) for d in datasets)
