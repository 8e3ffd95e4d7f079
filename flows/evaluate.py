"""Flow ``evaluate``: benchmarks (PSNR-Y/SSIM-Y) and efficiency of a trained model.

Scores with the same suite function as ``srcore eval`` and profiles the model at the configured size
(params, FLOPs, activations, peak memory, latency), from one load (``srcore.evaluation.scoring``); logs it
all to one MLflow run ``evaluate-<model>-x<scale>`` (nested under ``parent_run_id`` when given):
the metrics, the Markdown table and the per-dataset table as an MLflow table artifact; the table
is also a Prefect markdown artifact of the flow run. Returns the flat metrics (what the
promotion gate reads: ``<dataset>_psnr_y``, ``params``, ``latency_ms``, ``flops_g``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import digest, file_digest
from srcore.evaluation import EFFICIENCY_KEYS, score_model


@task(name="score-model", persist_result=True,
      cache_key_fn=lambda _c, a: "score-" + digest(file_digest(a["model_path"]), a["datasets"], a["scale"],
                                                   a["size"], a["threads"]))
def score_task(model_path: str, datasets: list[str], scale: int, size: int, threads: int
               ) -> tuple[dict[str, float], str]:
    return score_model(model_path, datasets, scale, size, threads)


def _label(model_path: str, scale: int) -> str:
    return f"{Path(model_path).parent.name or Path(model_path).stem}-x{scale}"


def _dataset_rows(label: str, metrics: dict[str, float]) -> dict[str, list]:
    """Columns of the per-dataset table (one row per dataset) for ``mlflow.log_table``."""
    names = sorted(k[: -len("_psnr_y")] for k in metrics if k.endswith("_psnr_y"))
    return {"model": [label] * len(names), "dataset": names,
            "psnr_y": [metrics[f"{n}_psnr_y"] for n in names],
            "ssim_y": [metrics.get(f"{n}_ssim_y") for n in names]}


@task(name="log-evaluation")
def log_table_task(model_path: str, scale: int, metrics: dict[str, float], table: str,
                   parent_run_id: str | None = None) -> None:
    import mlflow

    from srcore.tracking.runs import configure

    configure()
    label = _label(model_path, scale)
    table += ("\n\nEfficiency: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in EFFICIENCY_KEYS if k in metrics)
              + "\n")
    with mlflow.start_run(run_name=f"evaluate-{label}", parent_run_id=parent_run_id):
        mlflow.set_tags({"stage": "evaluate", "model_path": str(model_path)})
        mlflow.log_metrics(metrics)
        mlflow.log_text(table, f"evaluation/x{scale}.md")
        mlflow.log_table(_dataset_rows(label, metrics), artifact_file=f"evaluation/x{scale}.json")
    create_markdown_artifact(markdown=table, key="evaluation-" + re.sub(r"[^a-z0-9-]+", "-", label.lower()),
                             description=f"benchmarks and efficiency of {model_path}")


@flow(name="evaluate", log_prints=True)
def evaluate(model_path: str, datasets: list[str], scale: int = 4, parent_run_id: str | None = None,
             efficiency_size: int = 256, efficiency_threads: int = 1) -> dict[str, float]:
    metrics, table = score_task(model_path, datasets, scale, efficiency_size, efficiency_threads)
    log_table_task(model_path, scale, metrics, table, parent_run_id)
    return metrics
