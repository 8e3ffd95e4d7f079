"""The Ray Train task shared by the train_teacher and distill flows, with its console progress bar."""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from rich.console import Console

from srcore.console import training_bar
from srcore.config import Params
from srcore.errors import SrcoreError
from srcore.train.runner import run_stage


def _retryable(task, task_run, state) -> bool:
    """Bad parameters or data fail the same way every time: only other failures are retried."""
    try:
        state.result()
    except SrcoreError:
        return False
    except Exception:
        return True
    return True


# Not a Prefect cache: run_stage itself skips a run whose recorded result (same parameters,
# exported model still on disk) is complete, and says so. A cache keyed before execution could
# not tell "never trained" from "trained, then deleted" and would hand back a vanished path.
# A retried task re-runs the same Ray run name, so Ray resumes from its latest checkpoint.
@task(name="ray-train", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_retryable,
      task_run_name="ray-train-{stage}")
def train_stage(params: Params, stage: str, address: str | None = None) -> dict[str, Any]:
    # Ray's own output goes to the run folder's ray.log unless debug logging (--verbose) is on.
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    with training_bar(Console(stderr=True), stage) as on_progress:
        r = run_stage(params, stage, address=address, on_progress=on_progress, quiet_ray=not verbose)
    return {"model_path": r.model_path, "metrics": r.metrics, "run_dir": r.run_dir, "history": r.history}
