"""The one small actor a training stage adds to the cluster: events from the ranks to the driver
(rank 0's progress, any rank's user error) and the driver's stop request to rank 0.

One actor for both, and a module that imports nothing heavy: every actor is a process of its own
that imports its class's module, so a stage pays for this one once, at the cost of ``import ray``.
Ranks send progress without waiting (one caller's calls arrive in order); a user error, sent just
before a rank ends, is waited for until the actor holds it, so it reaches the driver.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["RunChannel", "new_channel"]


class RunChannel:
    """Held by a Ray actor without CPUs (see :func:`new_channel`)."""

    def __init__(self, maxsize: int = 1000) -> None:
        self.events: deque[dict[str, Any]] = deque()
        self.maxsize = maxsize
        self.dropped = 0  # events refused while full (the driver stopped draining)
        self.stop_reason: str | None = None

    def put(self, event: dict[str, Any]) -> bool:
        """Keep ``event`` for the driver; False (and counted) when ``maxsize`` are waiting."""
        if len(self.events) >= self.maxsize:
            self.dropped += 1
            return False
        self.events.append(event)
        return True

    def take(self, most: int = 100) -> list[dict[str, Any]]:
        """Up to ``most`` waiting events, oldest first (empty when none wait)."""
        return [self.events.popleft() for _ in range(min(most, len(self.events)))]

    def request_stop(self, reason: str) -> None:
        """The driver asks the run to stop at its next step (see ``srcore.train.stop``)."""
        self.stop_reason = self.stop_reason or reason

    def stop_requested(self) -> str | None:
        return self.stop_reason


def new_channel(maxsize: int = 1000) -> Any:
    """A :class:`RunChannel` actor on the connected Ray, on its head node (``on_head_node``); its
    handle travels in the ranks' config."""
    import ray

    from srcore.raycluster import on_head_node

    return ray.remote(RunChannel).options(**on_head_node()).remote(maxsize)
