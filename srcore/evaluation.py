"""Benchmark evaluation: super-resolve each LR image, score PSNR/SSIM on Y against the HR."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from srcore.data.benchmarks import count_images, iter_benchmark
from srcore.data.image_io import write_png
from srcore.inference import upscale_image
from srcore.metrics import psnr_y, ssim_y
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["DatasetResult", "evaluate_dataset", "evaluate"]


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


def evaluate_dataset(model: SRModel, dataset: str, scale: int, data_root: str | os.PathLike | None = None,
                     device: torch.device | str = "cpu", tile: int | None = None,
                     save_dir: str | os.PathLike | None = None,
                     on_image: Callable[[str], None] | None = None) -> DatasetResult:
    """Evaluate ``model`` on one benchmark at ``scale`` with the field's protocol (border = scale)."""
    model.eval()
    per_image: dict[str, dict[str, float]] = {}
    for item in iter_benchmark(dataset, scale, data_root):
        sr = upscale_image(model, item.lr, device, tile=tile)
        if sr.shape != item.hr.shape:
            raise RuntimeError(f"{dataset}/{item.name}: model output {sr.shape} does not match HR {item.hr.shape}")
        per_image[item.name] = {"psnr_y": psnr_y(sr, item.hr, scale), "ssim_y": ssim_y(sr, item.hr, scale)}
        if save_dir is not None:
            write_png(Path(save_dir) / dataset / f"{item.name}_x{scale}.png", sr)
        if on_image is not None:
            on_image(item.name)
    return DatasetResult(
        psnr_y=float(np.mean([v["psnr_y"] for v in per_image.values()])),
        ssim_y=float(np.mean([v["ssim_y"] for v in per_image.values()])),
        images=len(per_image), per_image=per_image)


def evaluate(model: SRModel, datasets: Sequence[str], scale: int, data_root: str | os.PathLike | None = None,
             device: torch.device | str = "cpu", tile: int | None = None,
             save_dir: str | os.PathLike | None = None,
             on_image: Callable[[str], None] | None = None) -> dict[str, DatasetResult]:
    """Evaluate on several datasets; see :func:`evaluate_dataset`."""
    return {name: evaluate_dataset(model, name, scale, data_root, device, tile, save_dir, on_image)
            for name in datasets}


def total_images(datasets: Sequence[str], data_root: str | os.PathLike | None = None) -> int:
    """Image count over datasets, for progress bars."""
    return sum(count_images(d, data_root) for d in datasets)
