"""Stopping a training run cleanly: at a step boundary, with a checkpoint of that step.

Driver side, :class:`StopOnSignal` (around ``fit()``): the first SIGTERM or SIGINT is turned into a
stop request held by the stage's Ray actor (``srcore.train.channel``); a second signal, or the grace
period (``stop_grace_s``) running out, aborts the run at once (:class:`TrainingAborted`). After a
clean stop the driver raises :class:`TrainingInterrupted`, naming the step that was saved.

Worker side, :class:`StepControl` (one per rank): after every step rank 0 looks at the request
without waiting for it (a pending actor call, polled) and at the clock (``checkpoint_every_s``),
and tells every rank what to do with this step: nothing, checkpoint it, or checkpoint it and stop.
Ranks must agree, since a checkpoint is a collective (``ray.train.report``) and a rank that stops
alone would leave the others waiting in their next all-reduce; the decision is one broadcast.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import torch

from srcore.errors import SrcoreError

log = logging.getLogger(__name__)

__all__ = ["Action", "StepControl", "StopOnSignal", "TrainingAborted", "TrainingInterrupted"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SrcoreError):
    """The run stopped on a signal after saving a checkpoint of its last step; rerunning resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingAborted(TrainingInterrupted):
    """A second signal (or the grace period running out) ended the run without waiting for a checkpoint."""


class Action(IntEnum):
    """What every rank does after the current step."""

    NONE = 0
    CHECKPOINT = 1
    STOP = 2  # checkpoint, then return
    RECORD = 3  # hand rank 0's finished upload to Ray Train (a report without a new checkpoint)


class StopOnSignal:
    """While active, SIGTERM/SIGINT request a clean stop (then abort on the second one or after
    ``grace_s`` seconds). Signal handlers can only be installed from the main thread; elsewhere
    (a Prefect task in a worker thread) the signals keep their previous handlers."""

    def __init__(self, channel: Any, grace_s: float, run_name: str) -> None:
        self.channel, self.grace_s, self.run_name = channel, grace_s, run_name
        self.signum: int | None = None
        self.aborted: str | None = None  # why, once aborted
        self.controller: Any = None
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def install(self, controller: Any = None) -> None:
        """Take over SIGTERM and SIGINT (again, after Ray Train put its own SIGINT handler in place);
        ``controller`` is Ray Train's controller actor, aborted on the second signal."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.controller = controller or self.controller
        for sig in SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            self._previous.setdefault(sig, previous)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            self.channel.request_stop.remote(name)
            log.warning("%s: %s received; stopping after the current step with a checkpoint (within %g s; "
                        "send it again to abort at once)", self.run_name, name, self.grace_s)
            self._timer = threading.Timer(self.grace_s, os.kill, (os.getpid(), signum))
            self._timer.daemon = True
            self._timer.start()
            return
        if self.aborted is not None:
            return
        late = self._timer is not None and not self._timer.is_alive()
        self.aborted = f"no checkpoint within {self.grace_s:g} s" if late else f"second {name}"
        if self.controller is None:  # fit() has not started the run yet: nothing to wait for
            log.error("%s", self._aborted_message())
            os._exit(128 + self.signum)
        # Raising here would unwind through Ray's C++ wait loop; the controller ends the run and fit()
        # returns (or fails), after which the driver raises TrainingAborted (raise_if_aborted).
        self.controller.abort.remote()

    def _aborted_message(self) -> str:
        return (f"{self.run_name}: aborted ({self.aborted}), not waiting for a checkpoint; a rerun resumes "
                "from the newest one saved")

    def raise_if_aborted(self) -> None:
        """After fit(): a run ended by the second signal (or the grace period) ends here."""
        if self.aborted is not None:
            raise TrainingAborted(self._aborted_message(), self.signum or signal.SIGTERM)

    def __enter__(self) -> StopOnSignal:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class StepControl:
    """Rank-side: after each step, the same :class:`Action` on every rank (see the module docstring)."""

    def __init__(self, channel: Any, rank: int, world: int, device: torch.device,
                 checkpoint_every_s: float | None, failing: Callable[[], str | None] | None = None,
                 uploaded: Callable[[], bool] | None = None, record_every_s: float = 5.0) -> None:
        self.channel, self.rank, self.world, self.device = channel, rank, world, device
        self.every = checkpoint_every_s
        self.failing = failing  # rank 0: why the run cannot go on (checkpoints that cannot be stored)
        # rank 0: a checkpoint finished uploading and waits to be recorded; tried at most every few
        # seconds (recording asks the store first, and every rank reports)
        self.uploaded, self.record_every, self.recorded_at = uploaded, record_every_s, 0.0
        self.saved_at = time.monotonic()
        self._pending: Any = None
        self.stopping = False

    def checkpointed(self) -> None:
        """A checkpoint was just saved (validation or not): the clock for the next one restarts."""
        self.saved_at = time.monotonic()

    def _stop_requested(self) -> bool:
        if self.channel is None:
            return False
        import ray

        if self._pending is None:
            self._pending = self.channel.stop_requested.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return False
        reason, self._pending = ray.get(ready[0]), None
        return reason is not None

    def _decide(self) -> Action:
        if self._stop_requested() or (self.failing is not None and self.failing()):
            return Action.STOP
        if self.every is not None and time.monotonic() - self.saved_at >= self.every:
            return Action.CHECKPOINT
        if self.uploaded is not None and time.monotonic() - self.recorded_at >= self.record_every \
                and self.uploaded():
            self.recorded_at = time.monotonic()
            return Action.RECORD
        return Action.NONE

    def after_step(self) -> Action:
        action = self._decide() if self.rank == 0 else Action.NONE
        if self.world > 1:
            import torch.distributed as dist

            code = torch.tensor([int(action)], device=self.device)
            dist.broadcast(code, 0)
            action = Action(int(code.item()))
        self.stopping = action is Action.STOP
        return action
