"""Timing one side of a comparison in its own phase: warm-up, a pause, then the repeats.

torch's OpenMP threads keep spinning for a while after a call and steal the cores of whatever runs
next, so alternating two sides' calls measures neither. Each phase reports the median wall time and
the median process CPU time per call: CPU time does not count time the process waited for a core,
so it is the figure to compare on a machine shared with other work (with one thread per side it
counts no spinning either).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

PAUSE_S = 0.5


def times(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def phase(fn: Callable[[], object], repeats: int, pause_s: float = PAUSE_S) -> tuple[float, float]:
    """One warm-up call, a pause for other threads to go idle, then ``times(fn, repeats)``."""
    fn()
    time.sleep(pause_s)
    return times(fn, repeats)
