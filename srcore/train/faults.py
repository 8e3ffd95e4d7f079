"""Fault injection for drills and tests of failure recovery and resume; not a user setting.

A test (or an operator rehearsing recovery) sets ``SRCORE_TRAIN_FAULTS`` to a JSON object such as
``{"fail_once_at_step": 15}``, ``{"stop_at_step": 10}`` or ``{"data_error_at_step": 2}``, or wraps
the run in ``injected(...)``.
The driver reads it once per run (``from_env``) and hands the plan to the workers in their config,
so Ray workers started before the variable was set still see it. Without the variable the plan is
empty and training runs exactly as configured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from srcore.errors import ConfigError, DataError

__all__ = ["ENV", "FaultPlan", "from_env", "injected"]

ENV = "SRCORE_TRAIN_FAULTS"


@dataclass(frozen=True)
class FaultPlan:
    """``fail_once_at_step``: rank 0 raises once after this step (a marker file in the run folder
    remembers it happened); ``stop_at_step``: the run ends cleanly after this step, as if killed there;
    ``data_error_at_step``: every rank raises a ``DataError`` (a user error) after this step, and
    notes each attempt in ``marker`` with an ``.attempts`` suffix."""

    fail_once_at_step: int | None = None
    stop_at_step: int | None = None
    data_error_at_step: int | None = None

    def last_step(self, steps: int) -> int:
        return min(steps, self.stop_at_step or steps)

    def after_step(self, step: int, rank: int, marker: Path) -> None:
        if self.data_error_at_step == step:
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker.with_suffix(".attempts"), "a") as notes:
                notes.write(f"rank {rank} step {step}\n")
            raise DataError(f"injected data error at step {step} ({ENV})")
        if self.fail_once_at_step != step or rank != 0 or marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at step {step} ({ENV})")

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


def from_env() -> FaultPlan:
    text = os.environ.get(ENV)
    if not text:
        return FaultPlan()
    try:
        return FaultPlan(**json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{ENV}: expected a JSON object with fail_once_at_step / stop_at_step / "
                          f"data_error_at_step ({exc})") from None


@contextmanager
def injected(**faults: int) -> Iterator[FaultPlan]:
    """Run the block with these faults planned for every training run it starts."""
    plan = FaultPlan(**faults)
    before = os.environ.get(ENV)
    os.environ[ENV] = json.dumps(plan.as_dict())
    try:
        yield plan
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
