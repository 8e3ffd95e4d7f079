"""Flow ``train_teacher``: Ray Train on the shards. A run already completed with the same parameters is
not trained again (``run_stage`` checks its recorded result); ``manifest`` orders it after preprocessing.
The stage's MLflow run nests under ``parent_run_id`` when given."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import DEFAULT_PARAMS, params_with
from flows.stages import train_stage


@flow(name="train_teacher", log_prints=True)
def train_teacher(manifest: str, params_file: str = DEFAULT_PARAMS, profile: str | None = None,
                  overrides: dict[str, Any] | None = None, address: str | None = None,
                  parent_run_id: str | None = None) -> dict[str, Any]:
    return train_stage(params_with(params_file, profile, overrides), "teacher", address, parent_run_id)
