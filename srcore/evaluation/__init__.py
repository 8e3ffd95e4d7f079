"""Benchmark evaluation: super-resolve each LR image, score PSNR/SSIM on Y against the HR.

``dataset`` scores one benchmark (sequentially, with a process pool, or on a Ray cluster);
``suite`` runs models x scales x datasets into tables; ``checkpoint`` serves the pipeline stages.
"""

from srcore.evaluation.checkpoint import evaluate_checkpoint, suite_metrics
from srcore.evaluation.dataset import DatasetResult, EvalOptions, evaluate, evaluate_dataset, total_images
from srcore.evaluation.suite import SUITES, ModelEntry, ModelRow, SuiteResult, expand_datasets, run_suite

__all__ = ["SUITES", "DatasetResult", "EvalOptions", "ModelEntry", "ModelRow", "SuiteResult", "evaluate",
           "evaluate_checkpoint", "evaluate_dataset", "expand_datasets", "run_suite",
           "suite_metrics", "total_images"]
