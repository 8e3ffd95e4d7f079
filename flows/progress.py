"""The console display of a training stage: one progress bar fed by rank 0's reports.

Shared by ``srcore train``/``srcore distill`` and the flows (the demo's retrain chain): step of
steps, mean recent loss, samples/s, last validation PSNR-Y and the time left. The events are the
metrics dicts ``srcore.train.runner.run_stage`` hands to its ``on_progress`` callback. The bar
appears with the first event, so a run refused before training prints only its error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["training_bar"]


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:{spec}}{unit}"


@contextmanager
def training_bar(console: Console, label: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A live bar for one stage; yields the callback that moves it."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                        TextColumn("val PSNR-Y {task.fields[psnr]}"), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task(label, total=None, loss="-", speed="-", psnr="-")

    def update(event: dict[str, Any]) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=event.get("step", 0), total=event.get("steps"),
                        loss=_fmt(event.get("loss"), ".4f"),
                        speed=_fmt(event.get("samples_per_s"), ".1f", " samples/s"),
                        psnr=_fmt(event.get("val_psnr_y"), ".2f", " dB"))

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()
