"""Scoring one trained checkpoint for the evaluate/register stages: flat metrics plus the table.

``evaluate_checkpoint`` runs the same suite function as ``srcore eval`` and returns flat metrics
(``<dataset>_psnr_y``, ``<dataset>_ssim_y``, ``params``, ``latency_ms``) and the Markdown table.
"""

from __future__ import annotations

import torch

from srcore.evaluation.suite import ModelEntry, SuiteResult, run_suite
from srcore.metrics.efficiency import measure_latency
from srcore.models import build, load_model

__all__ = ["evaluate_checkpoint", "suite_metrics"]


def suite_metrics(result: SuiteResult, scale: int) -> dict[str, float]:
    """Flat MLflow-style metrics of the first model at ``scale``."""
    row = result.tables[scale][0]
    metrics: dict[str, float] = {}
    for name, r in row.results.items():
        metrics[f"{name}_psnr_y"], metrics[f"{name}_ssim_y"] = r.psnr_y, r.ssim_y
    metrics["params"] = float(row.params)
    return metrics


def evaluate_checkpoint(model_path: str, datasets: list[str], scale: int,
                        workers: int = 1) -> tuple[dict[str, float], str]:
    """PSNR-Y/SSIM-Y per dataset, params and CPU latency at 64x64 as flat metrics, plus the
    Markdown table (``model_path="bicubic"`` scores the bicubic baseline)."""
    model = (build("bicubic", scale) if model_path == "bicubic" else load_model(model_path)).eval()
    entry = ModelEntry(model.arch, lambda s: model if s == model.scale else None)
    result = run_suite([entry], datasets, [scale], workers=workers)
    metrics = suite_metrics(result, scale)
    with torch.no_grad():
        metrics["latency_ms"] = measure_latency(model, torch.rand(1, 3, 64, 64), warmup=1, repeats=3)
    return metrics, result.to_markdown()
