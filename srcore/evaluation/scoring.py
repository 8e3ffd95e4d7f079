"""Scoring one trained model for the evaluate and register stages: quality and efficiency from one load.

``score_model(model_path, datasets, scale)`` loads the model once (``BICUBIC`` names the bicubic
baseline instead of a file), runs the same suite function as ``srcore eval`` on ``datasets`` and
profiles it at a 1x3x``size``x``size`` CPU input (``srcore.metrics.efficiency.profile_model``). It
returns flat metrics (``<dataset>_psnr_y``, ``<dataset>_ssim_y`` and ``EFFICIENCY_KEYS``: ``params``,
``flops_g`` in the fvcore convention, ``activations_m``, ``peak_mem_mb``, ``latency_ms`` on
``threads`` threads) and the Markdown table.
"""

from __future__ import annotations

from srcore.evaluation.suite import ModelEntry, SuiteResult, run_suite
from srcore.metrics.efficiency import profile_model
from srcore.models import build, load_model
from srcore.models.base import SRModel

__all__ = ["BICUBIC", "EFFICIENCY_KEYS", "model_to_score", "score_model", "suite_metrics"]

BICUBIC = "bicubic"  # the model path that stands for the bicubic baseline (no file)
EFFICIENCY_KEYS = ("params", "flops_g", "activations_m", "peak_mem_mb", "latency_ms")


def model_to_score(model_path: str, scale: int) -> SRModel:
    """The model behind ``model_path`` (a file, URI or registry spec), or bicubic at ``scale``."""
    return (build(BICUBIC, scale) if model_path == BICUBIC else load_model(model_path)).eval()


def suite_metrics(result: SuiteResult, scale: int) -> dict[str, float]:
    """Flat MLflow-style metrics of the first model at ``scale``."""
    row = result.tables[scale][0]
    metrics: dict[str, float] = {}
    for name, r in row.results.items():
        metrics[f"{name}_psnr_y"], metrics[f"{name}_ssim_y"] = r.psnr_y, r.ssim_y
    metrics["params"] = float(row.params)
    return metrics


def score_model(model_path: str, datasets: list[str], scale: int, size: int = 256, threads: int = 1,
                workers: int = 1) -> tuple[dict[str, float], str]:
    """Quality on ``datasets`` and efficiency at ``size`` of one model, loaded once; see the module
    docstring."""
    model = model_to_score(model_path, scale)
    entry = ModelEntry(model.arch, lambda s: model if s == model.scale else None)
    result = run_suite([entry], datasets, [scale], workers=workers)
    metrics = suite_metrics(result, scale)
    report = profile_model(model, model.arch, model.scale, size, size, "cpu", repeats=5, warmup=1,
                           threads=threads).as_dict()
    metrics.update({key: float(report[key]) for key in EFFICIENCY_KEYS})
    return metrics, result.to_markdown()
