"""A bounded, ordered buffer of metric points between a training stage and its tracking server.

Training never waits on the network: ``put`` appends points (MLflow ``Metric`` objects, each with
its step and timestamp already set) and returns at once. One daemon thread, ``srcore-tracking-sender``,
sends them in the order they were put, in batches of at most ``batch`` points (MLflow's
``log_batch`` takes up to 1000 metrics a call), through the ``send`` callable it is given.

An outage costs two log lines and nothing else. When a send fails, or has not returned within
``stall_s`` seconds, the server is taken as unreachable: one WARNING names ``where`` and says that
training goes on with its points held. The thread then tries again every few seconds (1, 2, 4, then
every 5 s); once everything held when the server first answered again is sent, one WARNING says it
is back and how many held points were sent (and how many were dropped). A batch sent again after
an answer was lost is not doubled: MLflow's store ignores a point it holds already (same key, step,
timestamp and value). At most ``capacity`` points are held: past that the oldest are dropped and
counted, so a long outage costs the oldest points, never memory or a stalled training. A batch the
server refuses (:class:`Refused`: a client error, which no retry can fix) is dropped with one WARNING.

``close(wait_s)`` sends what is left, waiting at most ``wait_s`` seconds, stops the thread and
returns what was not delivered (:class:`Leftover`) for the caller's last line.

The sender's HTTP client may log its own retries (urllib3's ``Retrying ...`` warnings); those
records are dropped for the sender's thread only (:func:`quiet_thread`), as they are for
other threads that only talk to the tracking server in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

__all__ = ["SENDER_THREAD", "Leftover", "PointBuffer", "Refused", "quiet_thread", "short_reason"]

SENDER_THREAD = "srcore-tracking-sender"
MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 5.0)  # between tries while the server is away; the last repeats


class Leftover(NamedTuple):
    """What a closed buffer did not deliver: points still held, and points dropped (buffer full)
    that no WARNING reported yet."""

    unsent: int
    dropped: int


class Refused(Exception):
    """The server answered and refused a batch (a client error): sending it again cannot help."""


class _DropThreads(logging.Filter):
    """Drops the records logged from the named threads."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName not in self.names


_quieted: dict[str, _DropThreads] = {}


def quiet_thread(thread_name: str, logger: str = "urllib3.connectionpool") -> None:
    """Records of ``logger`` logged from ``thread_name`` stay off the console: that thread only
    talks to the tracking server in the background, and its outage is reported once by the buffer.
    By default the logger is urllib3's connection pool, whose ``Retrying (Retry(total=...)) after
    connection broken ...`` warnings come one per retry, for minutes. Every other thread's records
    pass as before."""
    drop = _quieted.get(logger)
    if drop is None:
        drop = _quieted[logger] = _DropThreads()
        logging.getLogger(logger).addFilter(drop)
    drop.names.add(thread_name)


def short_reason(exc: BaseException) -> str:
    """The root cause of a failed send in a few words (``[Errno 111] Connection refused``), not the
    nested wrappers around it (MLflow's, requests', urllib3's)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        # requests wraps urllib3's errors in its own arguments, not as their cause
        inner = exc.__cause__ or exc.__context__ or next(
            (a for a in reversed(exc.args) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        exc = inner
    text = (str(exc).splitlines() or [""])[0].strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class PointBuffer:
    """Points on their way to the tracking server (see the module docstring); ``put`` never blocks.
    ``sent``, ``dropped`` and ``refused`` count points so far."""

    def __init__(self, send: Callable[[list[Any]], None], where: str, capacity: int = 100_000,
                 batch: int = MAX_BATCH, stall_s: float = 10.0) -> None:
        if capacity < 1 or not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"capacity must be >= 1 and batch in 1..{MAX_BATCH}, got {capacity}, {batch}")
        self.send, self.where, self.capacity, self.batch, self.stall_s = send, where, capacity, batch, stall_s
        self._queue: deque[Any] = deque()
        self._head = 0  # the sequence number of _queue[0]; points are numbered 0, 1, ... as they are put
        self._cond = threading.Condition()
        self.sent = self.dropped = self.refused = 0
        self._reported_drops = 0
        self._in_flight_since: float | None = None
        # during an outage: the points sent before it; once the server answers again, the sequence
        # number just past what was held then (the outage ends when everything before it is sent)
        self._sent_before_outage: int | None = None
        self._backlog_end: int | None = None
        self._nudged = self._stopped = False
        quiet_thread(SENDER_THREAD)
        self._thread = threading.Thread(target=self._run, name=SENDER_THREAD, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Points held, not yet sent."""
        with self._cond:
            return len(self._queue)

    @property
    def reachable(self) -> bool:
        """False from a failed (or stalled) send until the points held then are sent."""
        with self._cond:
            return self._sent_before_outage is None

    def put(self, points: Sequence[Any]) -> None:
        """Hold ``points`` for the sender, dropping the oldest held past ``capacity``. Never waits on
        the network (called from the driver's progress thread, beside the console)."""
        if not points:
            return
        with self._cond:
            self._queue.extend(points)
            while len(self._queue) > self.capacity:
                self._queue.popleft()
                self._head += 1
                self.dropped += 1
            stalled = (self._in_flight_since is not None and self._sent_before_outage is None
                       and time.monotonic() - self._in_flight_since > self.stall_s)
            if stalled:
                self._went_down(f"no answer within {self.stall_s:g} s")
            self._cond.notify_all()

    def close(self, wait_s: float) -> Leftover:
        """Send what is held, waiting at most ``wait_s`` seconds, and stop the sender. Returns the
        points not sent and those dropped that no WARNING reported yet; the caller says what they
        cost (it knows what else the end of its work did not get)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._nudged = True  # the sender tries at once instead of sleeping out its delay
            self._cond.notify_all()
            while (self._queue or self._in_flight_since is not None) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(1.0, deadline - time.monotonic())))
            self._stopped = True
            self._cond.notify_all()
            left = Leftover(len(self._queue), max(0, self.dropped - self._reported_drops))
            self._reported_drops = self.dropped
        return left

    # --- the sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                if failures:
                    delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]
                    self._cond.wait_for(lambda: self._nudged or self._stopped, timeout=delay)
                self._nudged = False
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                first, batch = self._head, list(islice(self._queue, self.batch))
                self._in_flight_since = time.monotonic()
            try:
                self.send(batch)
            except Refused as exc:
                failures = 0
                self._done(first, batch, sent=False)
                log.warning("tracking server %s refused %d points (%s); they are dropped", self.where,
                            len(batch), short_reason(exc))
            except Exception as exc:  # any failure to deliver: keep the points, try again later
                failures += 1
                with self._cond:
                    self._in_flight_since = None
                    if self._sent_before_outage is None:
                        self._went_down(short_reason(exc))
                    self._backlog_end = None  # a recovery in progress did not last
                    self._cond.notify_all()
            else:
                failures = 0
                self._done(first, batch, sent=True)

    def _done(self, first: int, batch: list[Any], sent: bool) -> None:
        """Remove a delivered (or refused) batch from the queue; points of it that ``put`` dropped
        meanwhile reached the server after all and are not counted as dropped."""
        with self._cond:
            self._in_flight_since = None
            still_held = max(0, first + len(batch) - self._head)
            gone_meanwhile = len(batch) - still_held
            for _ in range(still_held):
                self._queue.popleft()
            self._head += still_held
            if sent:
                self.sent += len(batch)
                self.dropped -= gone_meanwhile
            else:
                self.refused += still_held
            if self._sent_before_outage is not None:
                self._came_back()
            self._cond.notify_all()

    def _went_down(self, reason: str) -> None:
        """Called with the lock held, once an outage starts."""
        self._sent_before_outage, self._backlog_end = self.sent, None
        log.warning("tracking server %s is unreachable (%s); training goes on, its points are held "
                    "(up to %d) until it answers", self.where, reason, self.capacity)

    def _came_back(self) -> None:
        """Called with the lock held after a delivery during an outage: the outage ends (one line)
        once every point held when the server first answered again is sent."""
        if self._backlog_end is None:
            self._backlog_end = self._head + len(self._queue)
        if self._head < self._backlog_end or self._sent_before_outage is None:
            return
        held = self.sent - self._sent_before_outage
        dropped = max(0, self.dropped - self._reported_drops)
        also = f", {dropped} older points dropped (buffer full at {self.capacity})" * bool(dropped)
        self._reported_drops = self.dropped
        self._sent_before_outage = self._backlog_end = None
        log.warning("tracking server %s is back: %d held points sent%s", self.where, held, also)
