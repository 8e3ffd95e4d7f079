"""The Ray Train task shared by the train_teacher and distill flows: ``srcore.console.train_with_progress``,
the stage function ``srcore train`` and ``srcore distill`` run too."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.exceptions import TerminationSignal
from rich.console import Console

from srcore.config import Params
from srcore.console import train_with_progress
from srcore.errors import SrcoreError
from srcore.train.stop import TrainingInterrupted

log = logging.getLogger(__name__)


@contextmanager
def interruption_crashes_the_run() -> Iterator[None]:
    """A stage stopped by SIGTERM/SIGINT (its checkpoint saved) ends the task and its flow run as
    Prefect ends runs it is signalled to stop: crashed, neither completed nor retried."""
    try:
        yield
    except TrainingInterrupted as exc:
        log.error("%s", exc)
        raise TerminationSignal(exc.signum) from exc


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
def train_stage(params: Params, stage: str, address: str | None = None, parent_run_id: str | None = None,
                teacher_run_id: str | None = None) -> dict[str, Any]:
    with interruption_crashes_the_run():
        r, run = train_with_progress(params, stage, Console(stderr=True), address=address,
                                     parent_run_id=parent_run_id, teacher_run_id=teacher_run_id,
                                     mlflow_label=f"MLflow ({stage})")
    return {"model_path": r.model_path, "metrics": r.metrics, "run_dir": r.run_dir, "history": r.history,
            "run_id": run.run_id}
