"""Flow ``evaluate``: benchmarks (PSNR-Y/SSIM-Y) and efficiency of a trained model."""

from __future__ import annotations

from prefect import flow, task

from flows.common import digest, file_digest
from srcore.tracking.publish import evaluate_checkpoint


@task(name="evaluate-checkpoint", persist_result=True,
      cache_key_fn=lambda _c, a: "eval-" + digest(file_digest(a["model_path"]), a["datasets"], a["scale"]))
def evaluate_task(model_path: str, datasets: list[str], scale: int) -> dict[str, float]:
    return evaluate_checkpoint(model_path, datasets, scale)


@flow(name="evaluate", log_prints=True)
def evaluate(model_path: str, datasets: list[str], scale: int = 4) -> dict[str, float]:
    return evaluate_task(model_path, datasets, scale)
