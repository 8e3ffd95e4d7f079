"""Flow ``evaluate``: benchmarks (PSNR-Y/SSIM-Y) and efficiency of a trained model.

Scores with the same suite function as ``srcore eval`` and logs the Markdown table and the
metrics to MLflow (one ``evaluate-<model>`` run); returns the flat metrics.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.common import digest, file_digest
from srcore.evaluation import evaluate_checkpoint


@task(name="evaluate-checkpoint", persist_result=True,
      cache_key_fn=lambda _c, a: "eval-" + digest(file_digest(a["model_path"]), a["datasets"], a["scale"]))
def evaluate_task(model_path: str, datasets: list[str], scale: int) -> tuple[dict[str, float], str]:
    return evaluate_checkpoint(model_path, datasets, scale)


@task(name="log-evaluation")
def log_table_task(model_path: str, scale: int, metrics: dict[str, float], table: str,
                   parent_run_id: str | None = None) -> None:
    import mlflow

    from srcore.tracking.runs import configure

    configure()
    with mlflow.start_run(run_name=f"evaluate-{Path(model_path).stem}-x{scale}", parent_run_id=parent_run_id):
        mlflow.set_tags({"stage": "evaluate", "model_path": str(model_path)})
        mlflow.log_metrics(metrics)
        mlflow.log_text(table, f"evaluation/x{scale}.md")


@flow(name="evaluate", log_prints=True)
def evaluate(model_path: str, datasets: list[str], scale: int = 4,
             parent_run_id: str | None = None) -> dict[str, float]:
    metrics, table = evaluate_task(model_path, datasets, scale)
    log_table_task(model_path, scale, metrics, table, parent_run_id)
    return metrics
