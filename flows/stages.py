"""The Ray Train task shared by the train_teacher and distill flows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from flows.common import digest
from srcore.config import Params
from srcore.train.runner import run_stage, storage_root


def _stage_key(_ctx, args: dict[str, Any]) -> str:
    """Key on what decides the result: the data (manifest hash), the stage and loader params, and
    whether the exported model is still there (a deleted run is trained again, never served stale)."""
    p: Params = args["params"]
    stage = args["stage"]
    section = p.student if stage == "distill" else p.teacher
    exported = Path(storage_root(section)) / section.name / "model.pth"
    return f"{stage}-" + digest(args["manifest"], section.model_dump(mode="json"), p.loader.model_dump(mode="json"),
                                exported.is_file())


# A retried task re-runs the same Ray run name, so Ray resumes from its latest checkpoint.
@task(name="ray-train", retries=2, retry_delay_seconds=[10, 60], cache_key_fn=_stage_key, persist_result=True,
      task_run_name="ray-train-{stage}")
def train_stage(params: Params, stage: str, manifest: str, address: str | None = None) -> dict[str, Any]:
    r = run_stage(params, stage, address=address)
    return {"model_path": r.model_path, "metrics": r.metrics, "run_dir": r.run_dir, "history": r.history}
