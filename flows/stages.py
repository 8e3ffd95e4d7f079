"""The Ray Train task shared by the train_teacher and distill flows."""

from __future__ import annotations

from typing import Any

from prefect import task

from srcore.config import Params
from srcore.train.runner import run_stage


# Not a Prefect cache: run_stage itself skips a run whose recorded result (same parameters,
# exported model still on disk) is complete, and says so. A cache keyed before execution could
# not tell "never trained" from "trained, then deleted" and would hand back a vanished path.
# A retried task re-runs the same Ray run name, so Ray resumes from its latest checkpoint.
@task(name="ray-train", retries=2, retry_delay_seconds=[10, 60], task_run_name="ray-train-{stage}")
def train_stage(params: Params, stage: str, manifest: str, address: str | None = None) -> dict[str, Any]:
    r = run_stage(params, stage, address=address)
    return {"model_path": r.model_path, "metrics": r.metrics, "run_dir": r.run_dir, "history": r.history}
