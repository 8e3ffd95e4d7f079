"""What the evaluate/register stages do: score a trained model, log the run, register, promote."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from srcore.config import Params, TrainParams
from srcore.data.benchmarks import iter_benchmark
from srcore.evaluation import evaluate_dataset
from srcore.inference import upscale_image
from srcore.metrics.efficiency import count_params, measure_latency
from srcore.models import build, load_model
from srcore.models.base import SRModel
from srcore.tracking.registry import PromotionPolicy, promote, registered_name
from srcore.tracking.runs import comparison_grid, configure, flatten, lineage, log_model_version

log = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "log_and_register"]


def evaluate_checkpoint(model_path: str, datasets: list[str], scale: int) -> dict[str, float]:
    """PSNR-Y/SSIM-Y per dataset plus params and CPU latency at 64x64, as flat metrics
    (``model_path="bicubic"`` scores the bicubic baseline)."""
    model = (build("bicubic", scale) if model_path == "bicubic" else load_model(model_path)).eval()
    metrics: dict[str, float] = {}
    for name in datasets:
        r = evaluate_dataset(model, name, scale)
        metrics[f"{name}_psnr_y"], metrics[f"{name}_ssim_y"] = r.psnr_y, r.ssim_y
    metrics["params"] = float(count_params(model))
    with torch.no_grad():
        metrics["latency_ms"] = measure_latency(model, torch.rand(1, 3, 64, 64), warmup=1, repeats=3)
    return metrics


def _grid(student: SRModel, teacher_path: str | None, dataset: str, scale: int) -> np.ndarray:
    item = next(iter(iter_benchmark(dataset, scale)))
    panels = [upscale_image(build("bicubic", scale), item.lr), upscale_image(student, item.lr)]
    if teacher_path:
        panels.append(upscale_image(load_model(teacher_path), item.lr))
    panels.append(item.hr)
    h, w = item.hr.shape[:2]
    c = min(h, w, 192)
    y, x = (h - c) // 2, (w - c) // 2
    return comparison_grid([p[y:y + c, x:x + c] for p in panels])


def log_and_register(params: Params, stage: str, model_path: str, metrics: dict[str, float],
                     history: list[dict[str, Any]] | None = None, teacher_path: str | None = None,
                     policy: PromotionPolicy | None = None, register: bool = True) -> dict[str, Any]:
    """One MLflow run for a trained model: params, step metrics, evaluation, lineage, images,
    the packaged model; then register it as ``srcore-<arch>-x<scale>`` and apply promotion."""
    import mlflow

    cfg: TrainParams = params.student if stage == "distill" else params.teacher
    client = configure()
    model = load_model(model_path)
    name = registered_name(model.arch, model.scale)
    with mlflow.start_run(run_name=f"{stage}-{cfg.name}") as run:
        mlflow.log_params(flatten({"stage": stage, "train": cfg.model_dump(mode="json"),
                                   "loader": params.loader.model_dump(mode="json"),
                                   "prepare": params.prepare.model_dump(mode="json")}))
        for h in history or []:
            for key in ("loss", "lr", "val_psnr_y"):
                if key in h and h[key] == h[key]:
                    mlflow.log_metric(f"train_{key}", float(h[key]), step=int(h["step"]))
        mlflow.log_metrics(metrics)
        mlflow.set_tags({**lineage(params.prepare.out), "stage": stage, "model_path": str(model_path)})
        dataset = params.eval.datasets[0]
        mlflow.log_image(_grid(model, teacher_path, dataset, model.scale), "comparison_bicubic_student_teacher_hr.png")
        version = log_model_version(model_path, name, client) if register else None
        run_id = run.info.run_id
    decision = promote(client, name, version, policy or PromotionPolicy()) if register else None
    return {"run_id": run_id, "registered_model": name, "version": version,
            "promoted": decision.promoted if decision else None, "reason": decision.reason if decision else None,
            "tracking_uri": mlflow.get_tracking_uri()}
