"""Efficiency of one trained checkpoint as flat metrics, for the evaluate stage and the promotion gate.

``checkpoint_efficiency(model_path, scale, size, threads)`` profiles the model (``"bicubic"`` for
the baseline) at a 1x3x``size``x``size`` CPU input with ``srcore.metrics.efficiency.profile_model``:
``params``, ``flops_g`` (fvcore convention), ``activations_m``, ``peak_mem_mb`` and ``latency_ms``
(``torch.utils.benchmark`` on ``threads`` threads).
"""

from __future__ import annotations

from srcore.metrics.efficiency import profile_model
from srcore.models import build, load_model

__all__ = ["EFFICIENCY_KEYS", "checkpoint_efficiency"]

EFFICIENCY_KEYS = ("params", "flops_g", "activations_m", "peak_mem_mb", "latency_ms")


def checkpoint_efficiency(model_path: str, scale: int, size: int = 256, threads: int = 1) -> dict[str, float]:
    model = build("bicubic", scale) if model_path == "bicubic" else load_model(model_path)
    report = profile_model(model, model.arch, model.scale, size, size, "cpu", repeats=5, warmup=1,
                           threads=threads).as_dict()
    return {key: float(report[key]) for key in EFFICIENCY_KEYS}
