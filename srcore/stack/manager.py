"""``up``, ``status`` and ``down`` for the whole stack.

``up`` starts the services in three waves (storage and Ray; servers; the Prefect worker), each
wave's processes launched before any of them is waited for, so slow starts overlap. A service
whose recorded process runs and answers is left alone (a second ``up`` is a no-op). One whose
process runs but does not answer gets its grace (``answer_grace_s``) to answer, then is restarted
(stopped the service's quick way, started again on the same data), with one log line saying so;
if it cannot be stopped, the error names the command to run. If a start fails, what this call
started from nothing is stopped again (a restarted service stays up), and the error names the
service and its log.
``down`` stops the waves in reverse order, the services of a wave side by side.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from srcore.stack.config import StackConfig, StackError
from srcore.stack.services import (
    MLflowServer,
    Postgres,
    PrefectServer,
    PrefectWorker,
    RayCluster,
    SeaweedFS,
    Service,
    ServiceState,
)

__all__ = ["ServiceState", "ServiceStatus", "UpReport", "up", "status", "down", "WAVES"]

log = logging.getLogger(__name__)

# Ray starts before the Python servers: its node agents must report within fixed time limits, which
# is easier while MLflow and Prefect are not importing at the same time.
WAVES: tuple[tuple[type[Service], ...], ...] = (
    (SeaweedFS, Postgres, RayCluster),
    (MLflowServer, PrefectServer),
    (PrefectWorker,),
)


@dataclass
class ServiceStatus:
    """One row of ``status``: a running process that fails its health check is ``NOT_ANSWERING``."""

    name: str
    version: str
    endpoint: str
    pids: list[int]
    state: ServiceState

    @property
    def healthy(self) -> bool:
        return self.state is ServiceState.RUNNING


@dataclass
class UpReport:
    """What ``up`` did: the services it started, those it restarted (with the line saying why), those
    already running, seconds until each was ready."""

    started: list[str] = field(default_factory=list)
    restarted: dict[str, str] = field(default_factory=dict)
    already_running: list[str] = field(default_factory=list)
    ready_after_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


@contextmanager
def _exclusive(cfg: StackConfig) -> Iterator[None]:
    """One ``up``/``down`` at a time per stack folder (a second one fails at once, naming the folder)."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    with open(cfg.path(".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"{cfg.root}: another `srcore stack up/down` is running there") from None
        yield


def _services(cfg: StackConfig) -> list[Service]:
    return [cls(cfg) for wave in WAVES for cls in wave]


def up(cfg: StackConfig) -> UpReport:
    """Start every service that is not running; write the env file. Idempotent."""
    with _exclusive(cfg):
        return _up(cfg)


def _up(cfg: StackConfig) -> UpReport:
    cfg.save()
    cfg.credentials()
    report = UpReport()
    t0 = time.monotonic()
    started: list[Service] = []
    try:
        for wave in WAVES:
            services = [cls(cfg) for cls in wave]
            states = {svc.name: svc.state() for svc in services}
            for svc in services:
                if states[svc.name] is ServiceState.NOT_RUNNING:
                    svc.check_ports()
                    log.info("starting %s", svc.name)
                    started.append(svc)
                    svc.start()
                    report.started.append(svc.name)
            silent = [svc for svc in services if states[svc.name] is ServiceState.NOT_ANSWERING]
            for svc, waited_s in _still_silent(silent):
                report.restarted[svc.name] = _restart(svc, waited_s, cfg)
            report.already_running += [svc.name for svc in services if svc.name not in report.started
                                       and svc.name not in report.restarted]
            for svc in services:
                svc.ready()
                report.ready_after_s[svc.name] = round(time.monotonic() - t0, 1)
    except BaseException:
        for svc in reversed(started):
            try:
                svc.stop()
            except Exception as exc:  # keep stopping the others; the original error is what matters
                log.warning("could not stop %s after a failed start: %s", svc.name, exc)
        raise
    cfg.write_env_file()
    report.total_s = round(time.monotonic() - t0, 1)
    return report


def _still_silent(services: list[Service]) -> list[tuple[Service, float]]:
    """Those of ``services`` not answering after their grace (polled together), each with the
    seconds it was waited for.

    A server can be busy for a moment (a long request, a garbage collection); only one silent for
    its whole grace is restarted."""
    t0 = time.monotonic()
    waiting, silent = list(services), []
    while waiting:
        waiting = [svc for svc in waiting if svc.state() is not ServiceState.RUNNING]
        elapsed = time.monotonic() - t0
        silent += [(svc, elapsed) for svc in waiting if elapsed >= svc.answer_grace_s()]
        waiting = [svc for svc in waiting if elapsed < svc.answer_grace_s()]
        if waiting:
            time.sleep(0.5)
    return silent


def _processes(pids: list[int]) -> str:
    return ("process " if len(pids) == 1 else "processes ") + ", ".join(map(str, pids))


def _restart(svc: Service, waited_s: float, cfg: StackConfig) -> str:
    """Stop ``svc`` its quick way and start it again on the same data; returns the line logged."""
    pids = svc.pids()
    if pids:
        line = f"{svc.name}: {_processes(pids)} alive but not answering for {int(waited_s)} s; restarting it"
    else:
        line = f"{svc.name}: not answering for {int(waited_s)} s, then its process exited; starting it again"
    log.warning(line)
    try:
        svc.stop()
    except Exception as exc:  # a process we may not signal, a stop command that fails
        raise StackError(f"{svc.name}: {_processes(pids)} not answering and could not be stopped ({exc}); "
                         f"run `{svc.stop_command(pids)}`, then `srcore stack up --dir {cfg.root}`") from exc
    svc.check_ports()
    svc.start()
    return line


def status(cfg: StackConfig) -> list[ServiceStatus]:
    """Each service's version, endpoint, processes and state (running, not answering, not running)."""
    return [ServiceStatus(svc.name, svc.version(), svc.endpoint(), svc.pids(), svc.state())
            for svc in _services(cfg)]


def down(cfg: StackConfig) -> dict[str, list[int]]:
    """Stop what ``up`` started (reverse order); the data stays for the next ``up``."""
    with _exclusive(cfg):
        return _down(cfg)


def _down(cfg: StackConfig) -> dict[str, list[int]]:
    # The waves in reverse (the worker first, storage last), each wave's services stopped side by side:
    # a server that takes its grace period to exit does not hold up the others of its wave.
    from concurrent.futures import ThreadPoolExecutor

    stopped: dict[str, list[int]] = {}
    errors = []
    for wave in reversed(WAVES):
        services = [cls(cfg) for cls in wave]
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            futures = [(svc, pool.submit(svc.stop)) for svc in services]
        for svc, future in futures:
            try:
                stopped[svc.name] = future.result()
            except Exception as exc:  # stop the rest, then report
                errors.append(f"{svc.name}: {exc}")
    cfg.env_file.unlink(missing_ok=True)
    if errors:
        raise StackError("some services did not stop cleanly: " + "; ".join(errors))
    return stopped
