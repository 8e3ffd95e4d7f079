"""Progress displays for long work, shared by the CLI and the flows: one kind of bar everywhere.

On a terminal a rich bar shows done/total, named fields (loss, speed, ...), elapsed time and ETA.
When the output is a log file a bar is unreadable, so the same updates become plain lines: one
when the description changes (a dataset or stage finished), one every ``log_every`` seconds and
one at the end, each with elapsed time and ETA.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressDisplay", "fmt", "training_bar"]


def fmt(value: Any, spec: str, unit: str = "") -> str:
    """``value`` formatted with ``spec``, or "-" when it is missing or NaN."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:{spec}}{unit}"


class ProgressDisplay:
    """A bar on a terminal, timed log lines elsewhere; use as a context manager and ``update``."""

    def __init__(self, console: Console, label: str, total: int | None = None, unit: str = "",
                 fields: Sequence[str] = (), log_every: float = 10.0, transient: bool = False,
                 terminal: bool | None = None) -> None:
        self.console, self.label, self.unit, self.fields = console, label, unit, tuple(fields)
        self.total, self.completed, self.values = total, 0, dict.fromkeys(self.fields, "-")
        self.log_every, self.start, self.last_line = log_every, time.monotonic(), 0.0
        self.terminal = console.is_terminal if terminal is None else terminal
        self.bar: Progress | None = None
        self.printed: tuple[str, int] | None = None
        if self.terminal:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            if unit:
                columns.append(TextColumn(unit))
            columns += [TextColumn(f"{{task.fields[{f}]}}") for f in self.fields]
            self.bar = Progress(*columns, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=console, transient=transient)
            self.task = self.bar.add_task(label, total=total, **self.values)

    def __enter__(self) -> ProgressDisplay:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.completed and exc[0] is None:
            self._line()

    def elapsed(self) -> float:
        """Seconds since the display was created."""
        return time.monotonic() - self.start

    def _line(self) -> None:
        if self.printed == (self.label, self.completed):
            return
        self.printed = (self.label, self.completed)
        elapsed = self.elapsed()
        self.last_line = elapsed
        done = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        eta = ""
        if self.total and self.completed:
            eta = f", ETA {elapsed / self.completed * max(self.total - self.completed, 0):.0f}s"
        extra = "".join(f", {v}" for v in self.values.values() if v != "-")
        unit = f" {self.unit}" if self.unit else ""
        self.console.print(f"{self.label}: {done}{unit}{extra} (elapsed {elapsed:.0f}s{eta})",
                           highlight=False)

    def update(self, completed: int | None = None, advance: int = 0, total: int | None = None,
               description: str | None = None, **fields: str) -> None:
        """Move the display; ``fields`` are preformatted strings for the named columns."""
        finished_label = description is not None and description != self.label and self.completed
        if finished_label and self.bar is None:
            self._line()  # a log reader sees each dataset/stage end on its own line
        self.completed = completed if completed is not None else self.completed + advance
        self.total = total if total is not None else self.total
        self.label = description or self.label
        self.values.update({k: v for k, v in fields.items() if k in self.values})
        if self.bar is not None:
            self.bar.update(self.task, completed=self.completed, total=self.total, description=self.label,
                            **self.values)
        elif (self.elapsed() - self.last_line >= self.log_every
              or (self.total and self.completed >= self.total)):
            self._line()


@contextmanager
def training_bar(console: Console, label: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """One display per training stage, fed by the metrics dicts rank 0 reports (step, steps, loss,
    samples_per_s, val_psnr_y); yields the callback. The display appears with the first report,
    so a run refused before training prints only its error."""
    display: ProgressDisplay | None = None
    stack: ProgressDisplay | nullcontext = nullcontext()

    def update(event: dict[str, Any]) -> None:
        nonlocal display, stack
        if display is None:
            display = stack = ProgressDisplay(console, label, unit="steps", fields=("loss", "speed", "psnr"))
            display.__enter__()
        loss, psnr = fmt(event.get("loss"), ".4f"), fmt(event.get("val_psnr_y"), ".2f", " dB")
        display.update(completed=event.get("step", 0), total=event.get("steps"),
                       loss="-" if loss == "-" else f"loss {loss}",
                       speed=fmt(event.get("samples_per_s"), ".1f", " samples/s"),
                       psnr="-" if psnr == "-" else f"val PSNR-Y {psnr}")

    try:
        yield update
    except BaseException as exc:
        stack.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        stack.__exit__(None, None, None)


def train_with_progress(params: Any, stage: str, console: Console, *, address: str | None = None,
                        name: str | None = None, parent_run_id: str | None = None,
                        teacher_run_id: str | None = None, mlflow_label: str = "MLflow") -> tuple[Any, Any]:
    """One training stage as ``srcore train``/``distill`` and the flows run it: its live-tracked MLflow
    run (``srcore.tracking.live.run_tracked_stage``, whose URL is printed as ``<mlflow_label>: URL``)
    and one progress bar; Ray's own output goes to the run's ``ray.log`` unless debug logging
    (``--verbose``) is on. Returns the stage's result and its MLflow run."""
    import logging

    from srcore.tracking.live import run_tracked_stage

    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    with training_bar(console, name or stage) as on_progress:
        return run_tracked_stage(params, stage, address=address, name=name, on_progress=on_progress,
                                 quiet_ray=not verbose, parent_run_id=parent_run_id,
                                 teacher_run_id=teacher_run_id,
                                 announce=lambda run: console.print(f"{mlflow_label}: {run.url}"))


def quiet_mlflow() -> None:
    """MLflow prints its INFO lines (the system-metrics monitor starting and stopping, ...) through
    its own handler, at the level ``MLFLOW_LOGGING_LEVEL`` gives when it is imported; the console
    shows its warnings only (``-v`` shows everything). Processes started from here inherit it."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "mlflow" in sys.modules:  # already imported (and configured) in this process
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
