"""Processes of the stack: start detached with a PID file, find them again, stop exactly them.

A PID file holds one PID per line and the process's start time, so a reused PID is never taken
for ours (``alive`` compares the recorded start time with the running process's).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from srcore import servers
from srcore.io import atomic_write_text
from srcore.servers import http_ok
from srcore.stack.config import StackError

__all__ = ["spawn", "record", "recorded", "alive", "stop_recorded", "port_in_use", "http_ok", "wait_until",
           "pids_matching"]

log = logging.getLogger(__name__)


def spawn(argv: Sequence[str], pid_file: Path, log_file: Path, env: dict[str, str],
          cwd: Path | None = None) -> int:
    """Start ``argv`` in its own session (it outlives the caller), output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        try:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        except FileNotFoundError as exc:
            raise StackError(f"{argv[0]}: executable not found; pip install -e '.[dev]'") from exc
    record(pid_file, [proc.pid])
    return proc.pid


def record(pid_file: Path, pids: Sequence[int]) -> None:
    """Write ``pids`` with their start times (reused PIDs are then recognised as foreign)."""
    entries = []
    for pid in pids:
        try:
            entries.append({"pid": pid, "started": psutil.Process(pid).create_time()})
        except psutil.NoSuchProcess:
            continue
    atomic_write_text(pid_file, json.dumps(entries) + "\n")


def recorded(pid_file: Path) -> list[psutil.Process]:
    """The recorded processes that are still the ones we started."""
    if not pid_file.is_file():
        return []
    try:
        entries = json.loads(pid_file.read_text())
    except json.JSONDecodeError:
        return []
    procs = []
    for e in entries:
        try:
            p = psutil.Process(int(e["pid"]))
            if abs(p.create_time() - float(e["started"])) < 1.0 and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except (psutil.NoSuchProcess, KeyError, ValueError):
            continue
    return procs


def alive(pid_file: Path) -> bool:
    return bool(recorded(pid_file))


def stop_recorded(pid_file: Path, grace_s: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> list[int]:
    """Send ``sig`` to the recorded processes and their children, SIGKILL what is left after ``grace_s``.

    ``sig`` is the signal that asks the program for its quick, clean exit (PostgreSQL's is SIGINT:
    SIGTERM makes it wait for every client to disconnect)."""
    procs = recorded(pid_file)
    family: dict[int, psutil.Process] = {}
    for p in procs:
        family[p.pid] = p
        try:
            for child in p.children(recursive=True):
                family[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    for p in family.values():
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(list(family.values()), timeout=grace_s)
    for p in left:
        log.warning("%s (pid %d) ignored %s for %.0f s: killing it", p.name(), p.pid, sig.name, grace_s)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    pid_file.unlink(missing_ok=True)
    return sorted(family)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], what: str, timeout: float, pid_file: Path | None = None,
               log_file: Path | None = None) -> float:
    """Poll ``check`` until true; fail naming ``what`` (and its log) if its process dies or time runs out."""
    died = (lambda: not alive(pid_file)) if pid_file is not None else None
    return servers.wait_until(check, what, timeout, died, log_file, error=StackError)


def pids_matching(needle: str) -> list[int]:
    """PIDs of processes whose command line mentions ``needle`` (Ray daemonises its own processes)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if p.info["pid"] != os.getpid() and any(needle in part for part in cmd):
            out.append(p.info["pid"])
    return out
