"""Benchmark evaluation: super-resolve each LR image, score PSNR/SSIM on Y against the HR.

``dataset`` scores one benchmark (sequentially, with a process pool, or on a Ray cluster);
``suite`` runs models x scales x datasets into tables; ``scoring`` scores one model (quality and
efficiency) for the pipeline stages.
"""

from srcore.evaluation.dataset import DatasetResult, EvalOptions, evaluate, evaluate_dataset, total_images
from srcore.evaluation.scoring import BICUBIC, EFFICIENCY_KEYS, score_model, suite_metrics
from srcore.evaluation.suite import (
    SUITES,
    ModelEntry,
    ModelRow,
    SuiteResult,
    expand_datasets,
    model_entries,
    run_suite,
)

__all__ = ["BICUBIC", "EFFICIENCY_KEYS", "SUITES", "DatasetResult", "EvalOptions", "ModelEntry", "ModelRow",
           "SuiteResult", "evaluate", "evaluate_dataset", "expand_datasets", "model_entries", "run_suite",
           "score_model",
           "suite_metrics", "total_images"]
