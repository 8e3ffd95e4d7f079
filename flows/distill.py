"""Flow ``distill``: a student from a frozen teacher. A run already completed with the same parameters is
not trained again (``run_stage`` checks its recorded result). The student's MLflow run nests under
``parent_run_id`` when given and is tagged with its teacher's run (``teacher_run_id``, else found by
the teacher's model path)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import DEFAULT_PARAMS, params_with
from flows.stages import train_stage


@flow(name="distill", log_prints=True)
def distill(manifest: str | None = None, student: str | None = None, teacher: str | None = None,
            params_file: str = DEFAULT_PARAMS, profile: str | None = None,
            overrides: dict[str, Any] | None = None, address: str | None = None,
            parent_run_id: str | None = None, teacher_run_id: str | None = None) -> dict[str, Any]:
    """Distil ``student`` (a preset; default from params.yaml) from ``teacher`` (path or models:/ URI)."""
    extra = dict(overrides or {})
    if student:
        extra["student.model"] = student
        extra.setdefault("student.name", f"student-{student}")
    if teacher:
        extra["student.teacher"] = teacher
    params = params_with(params_file, profile, extra)
    return train_stage(params, "distill", address, parent_run_id, teacher_run_id)
