"""``up``, ``status`` and ``down`` for the whole stack.

``up`` starts the services in three waves (storage and Ray; servers; the Prefect worker), each
wave's processes launched before any of them is waited for, so slow starts overlap. A service
whose recorded process still runs is left alone (a second ``up`` is a no-op). If a start fails,
what this call started is stopped again, and the error names the service and its log. ``down``
stops the waves in reverse order, the services of a wave side by side.
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
)

__all__ = ["ServiceStatus", "UpReport", "up", "status", "down", "WAVES"]

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
    name: str
    version: str
    endpoint: str
    pids: list[int]
    healthy: bool


@dataclass
class UpReport:
    """What ``up`` did: the services it started, those already running, seconds until each was ready."""

    started: list[str] = field(default_factory=list)
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
            for svc in services:
                if svc.running():
                    report.already_running.append(svc.name)
                    continue
                svc.check_ports()
                log.info("starting %s", svc.name)
                started.append(svc)
                svc.start()
                report.started.append(svc.name)
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


def status(cfg: StackConfig) -> list[ServiceStatus]:
    """Each service's version, endpoint, processes and health."""
    out = []
    for svc in _services(cfg):
        healthy = svc.running() and svc.healthy()
        out.append(ServiceStatus(svc.name, svc.version(), svc.endpoint(), svc.pids(), healthy))
    return out


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
